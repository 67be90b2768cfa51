// The official 0G TypeScript SDK as an independent client of a devnet, for cross-checks in tests.
// Usage: node sdk_client.js <command> <rpc_url> [args...]; prints one JSON value on stdout.
//   addresses                           the SDK's hard-coded contract addresses for chain 31337
//   request-headers <user_key> <provider>  what getRequestHeaders(provider) returns
const path = require("path");
const sdkRoot = path.join(process.env.ZG_ROUTER_NODE_MODULES, "@0gfoundation/0g-compute-ts-sdk");
const sdk = require(sdkRoot);
const { ethers } = require(require.resolve("ethers", { paths: [sdkRoot] }));

async function main() {
  const [command, rpcUrl, ...args] = process.argv.slice(2);
  if (command === "addresses") {
    return sdk.CONTRACT_ADDRESSES.hardhat;
  }
  if (command === "request-headers") {
    const [userKey, provider] = args;
    // The SDK console.logs progress ("Detected hardhat ..."); stdout must carry only the JSON result.
    console.log = console.info = console.debug = (...parts) => console.error(...parts);
    const wallet = new ethers.Wallet(userKey, new ethers.JsonRpcProvider(rpcUrl));
    const broker = await sdk.createZGComputeNetworkBroker(wallet);
    return await broker.inference.getRequestHeaders(provider);
  }
  throw new Error(`unknown command ${command}`);
}

main().then(
  (value) => { process.stdout.write(JSON.stringify(value)); process.exit(0); },
  (error) => { process.stderr.write(String(error && error.stack || error)); process.exit(1); },
);

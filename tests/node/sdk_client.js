// The official 0G TypeScript SDK as an independent client of a devnet, for cross-checks in tests.
// Usage: node sdk_client.js <command> <rpc_url> [args...]; prints one JSON value on stdout.
//   addresses                                  the SDK's hard-coded contract addresses for chain 31337
//   request-headers <user_key> <provider>      what getRequestHeaders(provider) returns
//   chat <user_key> <provider> <model>         a chat completion the documented way: getServiceMetadata,
//                                              getRequestHeaders, then fetch; {status, zgResKey, body}
const path = require("path");
const sdkRoot = path.join(process.env.ZG_ROUTER_NODE_MODULES, "@0gfoundation/0g-compute-ts-sdk");
const sdk = require(sdkRoot);
const { ethers } = require(require.resolve("ethers", { paths: [sdkRoot] }));

async function broker(rpcUrl, userKey) {
  // The SDK console.logs progress ("Detected hardhat ..."); stdout must carry only the JSON result.
  console.log = console.info = console.debug = (...parts) => console.error(...parts);
  const wallet = new ethers.Wallet(userKey, new ethers.JsonRpcProvider(rpcUrl));
  return await sdk.createZGComputeNetworkBroker(wallet);
}

async function main() {
  const [command, rpcUrl, ...args] = process.argv.slice(2);
  if (command === "addresses") {
    return sdk.CONTRACT_ADDRESSES.hardhat;
  }
  if (command === "request-headers") {
    const [userKey, provider] = args;
    return await (await broker(rpcUrl, userKey)).inference.getRequestHeaders(provider);
  }
  if (command === "chat") {
    const [userKey, provider, model] = args;
    const b = await broker(rpcUrl, userKey);
    const { endpoint } = await b.inference.getServiceMetadata(provider);
    const headers = await b.inference.getRequestHeaders(provider);
    const response = await fetch(`${endpoint}/chat/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...headers },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hello from the SDK" }] }),
    });
    return { status: response.status, zgResKey: response.headers.get("ZG-Res-Key"), body: await response.json() };
  }
  throw new Error(`unknown command ${command}`);
}

main().then(
  (value) => { process.stdout.write(JSON.stringify(value)); process.exit(0); },
  (error) => { process.stderr.write(String(error && error.stack || error)); process.exit(1); },
);

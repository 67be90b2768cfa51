"""Everything that talks to the chain. The only package that imports web3."""

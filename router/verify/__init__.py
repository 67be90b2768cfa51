"""TEE response verification (protocol.md §5): the pure verdict (``check``) and the background verifier."""

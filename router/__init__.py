"""zg-router: one fast, reliable OpenAI-compatible endpoint over the 0G Compute Network."""

"""In-memory provider state: health, limits, accounting. Synchronous mutations, no I/O."""

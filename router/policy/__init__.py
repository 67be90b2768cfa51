"""Pure routing decisions: which providers to try, and what a reply means."""

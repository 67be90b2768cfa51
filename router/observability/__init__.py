"""Events the core emits, and the observers (logs, later metrics) that turn them into output."""

"""Simulated 0G providers that speak the real provider broker's protocol (devnet only)."""

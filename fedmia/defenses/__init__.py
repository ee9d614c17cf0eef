"""Defenses, each switched on by a scenario key: DP (local and central), output hardening,
training-time regularisers. Secure aggregation lives in the server/client apps (Flower's SecAgg+)."""

"""Adapters: wire formats -> core calls, core errors -> status codes (KServe and TorchServe families)."""

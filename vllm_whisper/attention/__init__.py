"""Attention backends over the engine's caches: the torch reference (CPU and test oracle), Triton and optional
xformers; selector.py picks one (--attention-backend)."""

"""Attention backends over the engine's caches: a torch reference (CPU and test oracle) now, Triton later."""

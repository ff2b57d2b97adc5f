"""Attention: the K/V cache layout (kv_cache_layout.py: the tensors, their shapes and bytes per block / slot) and
the backends over it, the torch reference (CPU and test oracle) and Triton; selector.py picks one
(--attention-backend) and hands the model its encoder attention per call."""

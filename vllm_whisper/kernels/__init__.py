"""Triton kernels, each beside a pure-torch reference it is tested against.

  encoder_attention   non-causal flash attention over the 1500 encoder frames (batched windows)
  paged_attention     decoder self-attention over the paged cache via block tables (prompt and one-token decode)
  cross_attention     decode-time cross attention over a window's cross-K/V slot, split over the frames
                      (flash-decoding) so a small batch still fills the GPU
  kv_store            fused store of the new tokens' K and V into the paged cache

Triton is imported by these modules only, never by the package at import time: the kernels compile for CUDA
(compute capability 7.5 and up; bf16 from 8.0), and run on CPU tensors only under TRITON_INTERPRET=1, which must
be set before the first kernel module is imported. `python -m vllm_whisper.kernels.compile_check 75 80 90` compiles
them all for real architectures without a GPU and reports registers and spills.
"""

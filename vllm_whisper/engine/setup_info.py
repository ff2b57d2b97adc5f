"""What an engine was built with, for the server's start-up line: device, dtype, attention backend, the sizes of
its two cache pools and the CUDA graph buckets it captured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from vllm_whisper.engine.llm_engine import LLMEngine


@dataclass(frozen=True)
class EngineSetup:
    """The engine's fixed facts, as an operator reads them at start-up."""

    device: str  # cpu | cuda
    dtype: str  # float32, float16, bfloat16 (the activations' dtype)
    quantization: str  # int8 or none
    attention_backend: str  # torch | triton
    num_kv_blocks: int
    kv_cache_gib: float  # self-attention blocks, all layers, K and V
    num_cross_slots: int
    cross_cache_gib: float  # cross-attention slots, all layers, K and V
    kv_cache_dtype: str  # what the cross-attention slots store (--kv-cache-dtype)
    cuda_graph_batch_sizes: tuple[int, ...]  # empty when no decode graphs were captured
    max_num_seqs: int


def _gib(tensors: list[Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def engine_setup(engine: "LLMEngine") -> EngineSetup:
    """Read the facts off a built engine (its pools and caches are sized once, at construction)."""
    model, runner = engine.loaded.model, engine.runner
    cache, graphs = runner.cache, runner.graphs
    return EngineSetup(
        device=model.device.type, dtype=str(model.dtype).removeprefix("torch."),
        quantization=model.quantization or "none",
        attention_backend=runner.backend.name,
        num_kv_blocks=engine.block_pool.num_blocks, kv_cache_gib=_gib(cache.self_k + cache.self_v),
        num_cross_slots=engine.slot_pool.num_slots, cross_cache_gib=_gib(cache.cross_k + cache.cross_v),
        kv_cache_dtype=str(cache.cross_k[0].dtype).removeprefix("torch."),
        cuda_graph_batch_sizes=tuple(graphs.batch_sizes) if graphs is not None and graphs.captured else (),
        max_num_seqs=engine.config.max_num_seqs)

"""The server's start-up line: what the engine runs on and how big its caches are, in one place for an operator.

    Engine 000: ready: device=cuda dtype=float16 quantization=none attention=triton kv_cache=40960 blocks (3.75 GiB)
    cross_slots=512 (18.75 GiB) cuda_graphs=1,2,4,8,16,24,32,40,48,56,64 max_num_seqs=64 models=tiny.en,whisper-1
    listening=http://0.0.0.0:8000
"""

from __future__ import annotations

from torch import Tensor

from vllm_whisper.engine.llm_engine import LLMEngine


def _gib(tensors: list[Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def startup_line(engine: LLMEngine, quantization: str | None, served_names: list[str], host: str, port: int,
                 engine_index: int = 0) -> str:
    """Device, dtype, quantization, attention backend, KV-cache and cross-attention pools (count and GiB), CUDA
    graph buckets ("off" when none are captured), max-num-seqs, served names and the address."""
    model, cache, runner = engine.loaded.model, engine.runner.cache, engine.runner
    graphs = runner.graphs
    buckets = ",".join(map(str, graphs.batch_sizes)) if graphs is not None and graphs.captured else "off"
    dtype = str(model.dtype).removeprefix("torch.")
    return (f"Engine {engine_index:03d}: ready: device={model.device.type} dtype={dtype} "
            f"quantization={quantization or 'none'} attention={runner.backend.name} "
            f"kv_cache={engine.block_pool.num_blocks} blocks ({_gib(cache.self_k + cache.self_v):.2f} GiB) "
            f"cross_slots={engine.slot_pool.num_slots} ({_gib(cache.cross_k + cache.cross_v):.2f} GiB) "
            f"cuda_graphs={buckets} max_num_seqs={engine.config.max_num_seqs} models={','.join(served_names)} "
            f"listening=http://{host}:{port}")

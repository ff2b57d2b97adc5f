"""The server's start-up line: what the engine runs on and how big its caches are, in one place for an operator.

    Engine 000: ready: device=cuda dtype=float16 quantization=none attention=triton kv_cache=40960 blocks (3.75 GiB)
    cross_slots=512 (18.75 GiB) cuda_graphs=1,2,4,8,16,24,32,40,48,56,64 max_num_seqs=64 models=tiny.en,whisper-1
    listening=http://0.0.0.0:8000
"""

from __future__ import annotations

from vllm_whisper.engine.setup_info import EngineSetup


def startup_line(setup: EngineSetup, served_names: list[str], host: str, port: int,
                 engine_index: int = 0) -> str:
    """Device, dtype, quantization, attention backend, KV-cache and cross-attention pools (count and GiB), CUDA
    graph buckets ("off" when none are captured), max-num-seqs, served names and the address."""
    buckets = ",".join(map(str, setup.cuda_graph_batch_sizes)) or "off"
    return (f"Engine {engine_index:03d}: ready: device={setup.device} dtype={setup.dtype} "
            f"quantization={setup.quantization} attention={setup.attention_backend} "
            f"kv_cache={setup.num_kv_blocks} blocks ({setup.kv_cache_gib:.2f} GiB) "
            f"cross_slots={setup.num_cross_slots} ({setup.cross_cache_gib:.2f} GiB) "
            f"kv_cache_dtype={setup.kv_cache_dtype} "
            f"cuda_graphs={buckets} max_num_seqs={setup.max_num_seqs} models={','.join(served_names)} "
            f"listening=http://{host}:{port}")

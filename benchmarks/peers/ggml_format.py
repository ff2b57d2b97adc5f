"""whisper.cpp's legacy ggml model file (.bin): writer and header reader, plus ggml's q8_0 block quantization.

Layout, as whisper.cpp's whisper_model_load reads it (all little-endian int32 / float32):
magic 0x67676d6c; 11 hparams; mel filters (n_mel, n_fft, n_mel*n_fft float32); vocabulary (count, then each token as
length + raw bytes); then tensors, each as (n_dims, name length, ggml type, dims innermost first, name, data).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

GGML_MAGIC = 0x67676D6C
QK8_0 = 32  # values per q8_0 block: one float16 scale then 32 int8
Q8_0_BLOCK_BYTES = 2 + QK8_0

# ggml_type codes of single tensors, and ggml_ftype codes of whole files (whisper.cpp picks its weight type by it)
GGML_TYPE = {"f32": 0, "f16": 1, "q8_0": 8}
GGML_FTYPE = {"f32": 0, "f16": 1, "q8_0": 7}
GGML_QNT_VERSION = 2
GGML_QNT_VERSION_FACTOR = 1000  # quantized files store ftype + GGML_QNT_VERSION * 1000, as whisper-quantize does

HPARAM_NAMES = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_text_ctx",
                "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype")


class GgmlFormatError(ValueError):
    """A ggml file or tensor that whisper.cpp could not read."""


@dataclass(frozen=True)
class GgmlHparams:
    """The 11 int32 hyper-parameters at the head of a whisper.cpp model file."""

    n_vocab: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_mels: int
    ftype: int

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in HPARAM_NAMES)


@dataclass(frozen=True)
class GgmlTensor:
    """One named tensor ready to write: torch-order shape and its ggml type ("f32", "f16" or "q8_0")."""

    name: str
    data: np.ndarray  # float32 values in torch (row-major) order
    kind: str


@dataclass(frozen=True)
class GgmlFileSummary:
    """What read_ggml_summary found in a file: enough to check a conversion without whisper.cpp."""

    hparams: GgmlHparams
    mel_filters: np.ndarray
    vocab: list[bytes]
    tensors: dict[str, tuple[tuple[int, ...], int]]  # name -> (torch-order shape, ggml type)


def quantize_q8_0(values: np.ndarray) -> bytes:
    """ggml's quantize_row_q8_0_ref over the last axis: per 32 values, scale = max|x| / 127, q = round(x / scale)."""
    rows = np.ascontiguousarray(values, dtype=np.float32)
    if rows.shape[-1] % QK8_0:
        raise GgmlFormatError(f"q8_0 needs rows that are a multiple of {QK8_0} values, got shape {values.shape}")
    blocks = rows.reshape(-1, QK8_0)
    scale = np.abs(blocks).max(axis=1) / 127.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    scaled = blocks * inverse[:, None]
    quants = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)  # roundf: halves away from zero
    packed = np.empty((blocks.shape[0], Q8_0_BLOCK_BYTES), dtype=np.uint8)
    packed[:, :2] = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    packed[:, 2:] = quants.view(np.uint8)
    return packed.tobytes()


def dequantize_q8_0(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of quantize_q8_0: float32 values of the given torch-order shape."""
    packed = np.frombuffer(data, dtype=np.uint8).reshape(-1, Q8_0_BLOCK_BYTES)
    scale = packed[:, :2].copy().view(np.float16).astype(np.float32)
    quants = packed[:, 2:].copy().view(np.int8).astype(np.float32)
    return (quants * scale).reshape(shape)


def tensor_bytes(tensor: GgmlTensor) -> bytes:
    """The tensor's data as whisper.cpp reads it for its ggml type."""
    if tensor.kind == "f32":
        return np.ascontiguousarray(tensor.data, dtype=np.float32).tobytes()
    if tensor.kind == "f16":
        return np.ascontiguousarray(tensor.data, dtype=np.float16).tobytes()
    if tensor.kind == "q8_0":
        return quantize_q8_0(tensor.data)
    raise GgmlFormatError(f"tensor {tensor.name}: unsupported ggml type {tensor.kind!r}; use f32, f16 or q8_0")


def write_ggml_model(path: Path, hparams: GgmlHparams, mel_filters: np.ndarray, vocab: list[bytes],
                     tensors: list[GgmlTensor]) -> Path:
    """Write a whisper.cpp model file; the data of each tensor follows its header directly (no alignment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        out.write(struct.pack("<i", GGML_MAGIC))
        out.write(struct.pack("<11i", *hparams.as_tuple()))
        filters = np.ascontiguousarray(mel_filters, dtype=np.float32)
        out.write(struct.pack("<2i", *filters.shape))
        out.write(filters.tobytes())
        out.write(struct.pack("<i", len(vocab)))
        for token in vocab:
            out.write(struct.pack("<i", len(token)))
            out.write(token)
        for tensor in tensors:
            name = tensor.name.encode("utf-8")
            dims = tuple(reversed(tensor.data.shape))  # ggml's ne[0] is the innermost (last torch) dimension
            out.write(struct.pack("<3i", len(dims), len(name), GGML_TYPE[tensor.kind]))
            out.write(struct.pack(f"<{len(dims)}i", *dims))
            out.write(name)
            out.write(tensor_bytes(tensor))
    partial.replace(path)  # a crash mid-write never leaves a truncated model where the cache looks for one
    return path


def _read(stream: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    chunk = stream.read(size)
    if len(chunk) != size:
        raise GgmlFormatError(f"file ends early: wanted {size} more bytes")
    return struct.unpack(fmt, chunk)


def _data_size(kind: int, count: int) -> int:
    if kind == GGML_TYPE["f32"]:
        return 4 * count
    if kind == GGML_TYPE["f16"]:
        return 2 * count
    if kind == GGML_TYPE["q8_0"]:
        return count // QK8_0 * Q8_0_BLOCK_BYTES
    raise GgmlFormatError(f"unknown ggml tensor type {kind}")


def read_ggml_summary(path: Path) -> GgmlFileSummary:
    """Read back a file written by write_ggml_model (or whisper.cpp's converter), skipping tensor data."""
    with open(path, "rb") as stream:
        (magic,) = _read(stream, "<i")
        if magic != GGML_MAGIC:
            raise GgmlFormatError(f"{path}: magic {magic:#x} is not ggml's {GGML_MAGIC:#x}")
        hparams = GgmlHparams(*_read(stream, "<11i"))
        n_mel, n_fft = _read(stream, "<2i")
        filters = np.frombuffer(stream.read(4 * n_mel * n_fft), dtype=np.float32).reshape(n_mel, n_fft)
        (count,) = _read(stream, "<i")
        vocab = [stream.read(_read(stream, "<i")[0]) for _ in range(count)]
        tensors: dict[str, tuple[tuple[int, ...], int]] = {}
        while header := stream.read(12):
            n_dims, name_len, kind = struct.unpack("<3i", header)
            dims = _read(stream, f"<{n_dims}i")
            name = stream.read(name_len).decode("utf-8")
            stream.seek(_data_size(kind, int(np.prod(dims))), 1)
            tensors[name] = (tuple(reversed(dims)), kind)
    return GgmlFileSummary(hparams, filters, vocab, tensors)

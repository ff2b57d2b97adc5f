"""Reader and writer for CTranslate2's model.bin (format version 6), the format faster-whisper uses.

Layout: u32 version, u16-length-prefixed spec name, u32 revision, u32 variable count, then per variable a
u16-length-prefixed name, u8 rank, u32 dims, u8 dtype, u32 byte count and the raw data; then u32 alias count
and (alias, target) name pairs. Strings are NUL-terminated inside their length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vllm_whisper.model_executor.errors import ModelLoadError

CT2_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # reinterpreted as torch.bfloat16 after reading
}
_TORCH_TO_CT2 = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}


@dataclass
class Ct2Model:
    """The variables of a CTranslate2 model, aliases resolved."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)


class _Cursor:
    """Bounds-checked reads over the file's bytes, so truncation is reported with the file's name."""

    def __init__(self, data: memoryview, label: str):
        self.data, self.label, self.offset = data, label, 0

    def take(self, size: int, what: str) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise ModelLoadError(
                f"{self.label} is truncated or corrupt: {what} needs {size} bytes at offset {self.offset}, "
                f"but the file ends at {len(self.data)}. Re-download or re-convert the model."
            )
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("<H", what)
        return bytes(self.take(length, what)).rstrip(b"\0").decode("utf-8", errors="replace")


def read_ct2_model(parts: list[Path]) -> Ct2Model:
    """Parse model.bin (or its ordered parts, concatenated) into tensors."""
    label = str(parts[0]) if len(parts) == 1 else f"{parts[0]} (+{len(parts) - 1} parts)"
    try:
        data = b"".join(p.read_bytes() for p in parts)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {label}: {exc}") from exc
    cursor = _Cursor(memoryview(data), label)
    version = cursor.unpack("<I", "the format version")
    if version != 6:
        raise ModelLoadError(f"{label}: CTranslate2 model format version {version} is not supported (expected 6)")
    spec = cursor.string("the spec name")
    revision = cursor.unpack("<I", "the spec revision")
    count = cursor.unpack("<I", "the variable count")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(count):
        name = cursor.string("a variable name")
        rank = cursor.unpack("<B", f"the rank of {name}")
        dims = [cursor.unpack("<I", f"the shape of {name}") for _ in range(rank)]
        dtype_id = cursor.unpack("<B", f"the dtype of {name}")
        nbytes = cursor.unpack("<I", f"the size of {name}")
        if dtype_id not in CT2_DTYPES:
            raise ModelLoadError(f"{label}: variable {name} has unknown dtype id {dtype_id}")
        _, np_dtype = CT2_DTYPES[dtype_id]
        expected = int(np.prod(dims, dtype=np.int64)) * np_dtype.itemsize
        if nbytes != expected:
            raise ModelLoadError(f"{label} is corrupt: {name} declares {nbytes} bytes, its shape needs {expected}")
        raw = np.frombuffer(cursor.take(nbytes, f"the data of {name}"), dtype=np_dtype).reshape(dims)
        tensor = torch.from_numpy(raw.copy())
        if dtype_id == 5:
            tensor = tensor.view(torch.bfloat16)
        variables[name] = tensor
    aliases: dict[str, str] = {}
    if cursor.offset < len(cursor.data):
        for _ in range(cursor.unpack("<I", "the alias count")):
            alias = cursor.string("an alias name")
            aliases[alias] = cursor.string("an alias target")
    for alias, target in aliases.items():
        if target not in variables:
            raise ModelLoadError(f"{label}: alias {alias} points to missing variable {target}")
        variables[alias] = variables[target]
    return Ct2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)


def write_ct2_model(path: Path, model: Ct2Model) -> None:
    """Write a model.bin that CTranslate2 (and read_ct2_model) can load; aliases are stored as aliases."""
    out = bytearray()

    def put_string(text: str) -> None:
        encoded = text.encode("utf-8") + b"\0"
        out.extend(struct.pack("<H", len(encoded)))
        out.extend(encoded)

    out.extend(struct.pack("<I", 6))
    put_string(model.spec)
    out.extend(struct.pack("<I", model.revision))
    stored = {k: v for k, v in model.variables.items() if k not in model.aliases}
    out.extend(struct.pack("<I", len(stored)))
    for name, tensor in stored.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype not in _TORCH_TO_CT2:
            raise ValueError(f"cannot store {name} of dtype {tensor.dtype} in a CTranslate2 model")
        raw = (tensor.view(torch.uint16) if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes()
        put_string(name)
        out.extend(struct.pack("<B", tensor.dim()))
        for dim in tensor.shape:
            out.extend(struct.pack("<I", dim))
        out.extend(struct.pack("<B", _TORCH_TO_CT2[tensor.dtype]))
        out.extend(struct.pack("<I", len(raw)))
        out.extend(raw)
    out.extend(struct.pack("<I", len(model.aliases)))
    for alias, target in model.aliases.items():
        put_string(alias)
        put_string(target)
    Path(path).write_bytes(bytes(out))

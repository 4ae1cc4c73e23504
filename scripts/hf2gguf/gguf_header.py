"""The header of a GGUF file: its scalar and string metadata and its tensor infos, read without the tensor data
and without decoding arrays.

gguf.GGUFReader builds a numpy view for every element of every array, which takes seconds for a vocabulary of
50,000 tokens (2.6 s for GPT-2's): once per quantize job and once per validate job, that was most of the
workflow's own overhead. The jobs need only the tensor infos and a few string keys; this reads them in about
10 ms from the mapped file (arrays are skipped by their lengths, never decoded), with the types and sizes of the
gguf package. gguf (with numpy, 0.13 s to import) is imported only when a tensor's type is not one of
FULL_PRECISION: the quantize jobs, which read a full-precision intermediate, never need it."""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

# ggml's type ids of the full-precision types (gguf.GGMLQuantizationType; tests/test_gguf_header.py checks them)
FULL_PRECISION = {0: "F32", 1: "F16", 30: "BF16"}
# GGUF value types (gguf.GGUFValueType) with a fixed size, as struct formats; 8 is a string, 9 an array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int  # ggml's
    shape: tuple[int, ...]  # numpy's order: the file stores it reversed

    @property
    def type(self):
        """gguf.GGMLQuantizationType; ValueError for a type that the gguf package does not know."""
        import gguf

        return gguf.GGMLQuantizationType(self.type_id)

    @property
    def type_name(self) -> str:
        return FULL_PRECISION.get(self.type_id) or self.type.name

    @property
    def n_elements(self) -> int:
        return prod(self.shape)

    @property
    def n_bytes(self) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * size


def read_header(path: str | Path) -> tuple[dict[str, object], list[TensorInfo]]:
    """({key: value} of the scalar and string KVs (array KVs are skipped), [tensor info]). A file that is not a
    GGUF (v2 or v3), is truncated or holds an unknown type raises ValueError."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise struct.error("empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _read(buf)
    except (struct.error, UnicodeDecodeError, KeyError) as e:
        raise ValueError(f"{path}: not a readable GGUF header ({type(e).__name__}: {e})") from None


U64 = struct.Struct("<Q")


def _read(buf) -> tuple[dict[str, object], list[TensorInfo]]:
    """Walks the header in the mapped file: a vocabulary's 50,000 strings are skipped by their lengths alone."""
    pos = 0

    def unpack(fmt: str):
        nonlocal pos
        s = struct.Struct("<" + fmt)
        values = s.unpack_from(buf, pos)
        pos += s.size
        return values

    def string() -> str:
        nonlocal pos
        (n,) = U64.unpack_from(buf, pos)
        if pos + 8 + n > len(buf):
            raise struct.error("a string runs past the end of the file")
        pos += 8 + n
        return buf[pos - n:pos].decode("utf-8")

    def skip(vtype: int, n: int) -> None:
        nonlocal pos
        if vtype in SCALARS:
            pos += n * struct.calcsize(SCALARS[vtype])
        elif vtype == STRING:
            for _ in range(n):
                pos += 8 + U64.unpack_from(buf, pos)[0]
        else:  # arrays of arrays
            for _ in range(n):
                skip(*unpack("IQ"))
        if pos > len(buf):
            raise struct.error("an array runs past the end of the file")

    magic, version, n_tensors, n_kv = unpack("4sIQQ")
    if magic != b"GGUF" or version not in (2, 3):
        raise struct.error(f"magic {magic!r}, version {version}")
    kv = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = unpack("I")
        if vtype == ARRAY:
            skip(*unpack("IQ"))
        elif vtype == STRING:
            kv[key] = string()
        else:
            kv[key] = unpack(SCALARS[vtype])[0]
    tensors = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = unpack("I")
        dims = unpack(f"{n_dims}Q")
        ttype, _offset = unpack("IQ")
        tensors.append(TensorInfo(name, ttype, tuple(reversed(dims))))
    return kv, tensors

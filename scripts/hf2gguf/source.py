"""Reading a Hugging Face model folder: config.json and safetensors weights, one tensor at a time.

Weights are memory-mapped, never loaded whole. Pickle checkpoints (*.bin, *.pt, *.ckpt) are refused:
loading them runs arbitrary code.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np
from gguf.utility import SafetensorsLocal
from safetensors import safe_open

from .errors import ConversionError

INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# safetensors dtype -> numpy dtype of the raw data. BF16 has no numpy dtype: its bits are read as uint16.
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def read_json(path: Path, what: str = "JSON") -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConversionError(path, "is missing", f"put the model's {path.name} there") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(path, f"is not valid {what} ({e})", "re-download the file") from None
    if not isinstance(data, dict):
        raise ConversionError(path, f"must hold a JSON object, not {type(data).__name__}", "re-download the file")
    return data


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    shard: Path
    offset: int  # absolute byte offset in the shard
    nbytes: int


class ModelFolder:
    """A Hugging Face model folder, indexed without reading any tensor data."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ConversionError(self.path, "is not a folder", "pass the path of a Hugging Face model folder")
        self.config = read_json(self.path / "config.json")
        self.tensors: dict[str, TensorInfo] = {}
        for shard in self._shards():
            self._index_shard(shard)
        self._fds: dict[Path, int] = {}

    def _shards(self) -> list[Path]:
        index = self.path / INDEX_NAME
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(index, "has no 'weight_map'", "re-download the index file")
            for file in weight_map.values():
                if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
                    raise ConversionError(index, f"names {file!r} as a shard; shards are *.safetensors files in "
                                          "the model folder itself", "re-download the index file")
            shards = sorted(set(weight_map.values()))
            for s in shards:
                if not (self.path / s).is_file():
                    raise ConversionError(self.path / s, f"is named in {INDEX_NAME} but missing",
                                          "download every shard listed in the index")
            self._weight_map = weight_map
            return [self.path / s for s in shards]
        self._weight_map = None
        shards = sorted(self.path.glob("*.safetensors"))
        if shards:
            return shards
        pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ConversionError(
                self.path, f"has only pickle weights ({', '.join(pickles)}), which are never loaded here: "
                "unpickling runs arbitrary code from the file",
                "convert them to safetensors on a trusted machine (transformers: "
                "model.save_pretrained(dir, safe_serialization=True)), or download the repo's *.safetensors")
        raise ConversionError(self.path, "has no weights (*.safetensors)", "download the model's *.safetensors files")

    def _index_shard(self, shard: Path) -> None:
        try:  # the safetensors library validates the header: offsets, overlaps, file size
            with safe_open(shard, framework="numpy"):
                pass
            local = SafetensorsLocal(shard)
        except Exception as e:  # noqa: BLE001 - any failure here means a broken file
            raise ConversionError(shard, f"is not a valid safetensors file ({e})",
                                  "re-download it; it may be truncated or corrupt") from None
        for name, t in local.tensors.items():
            if self._weight_map is not None and self._weight_map.get(name) not in (None, shard.name):
                continue
            if name in self.tensors:
                raise ConversionError(shard, f"repeats tensor {name!r} from {self.tensors[name].shard.name}",
                                      "remove the duplicate shard")
            self.tensors[name] = TensorInfo(name, t.dtype, tuple(t.shape), shard, t.data_range.offset,
                                            t.data_range.size)
        if self._weight_map is not None:
            for name, file in self._weight_map.items():
                if file == shard.name and name not in self.tensors:
                    raise ConversionError(shard, f"lacks tensor {name!r}, which {INDEX_NAME} places there",
                                          "re-download the shard")

    def check_dtype(self, name: str) -> None:
        t = self.tensors[name]
        if t.dtype not in DTYPES:
            raise ConversionError(
                t.shard, f"tensor {name!r} has dtype {t.dtype}; only {', '.join(DTYPES)} weights convert",
                "use the original (unquantized) checkpoint: pre-quantized weights such as GPTQ, AWQ or "
                "bitsandbytes int8/int4 are not supported")

    def fd(self, shard: Path) -> int:
        """A read-only descriptor of the shard, shared by the worker threads (pread is thread-safe)."""
        if shard not in self._fds:
            self._fds[shard] = os.open(shard, os.O_RDONLY)
        return self._fds[shard]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def rows(self, name: str) -> int:
        """The tensor's rows of its last axis: a [n_expert, n_ff, n_embd] tensor has n_expert * n_ff."""
        shape = self.tensors[name].shape
        return prod(shape[:-1]) if shape else 1

    def row_bytes(self, name: str) -> int:
        return self.tensors[name].nbytes // max(1, self.rows(name))

    def read_bytes(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start:stop of the tensor as their bytes, uint8 [rows, row bytes], whatever its dtype (a
        pre-quantized tensor's packed codes and scales, which are moved, never read as numbers)."""
        t = self.tensors[name]
        stop = self.rows(name) if stop is None else stop
        row = self.row_bytes(name)
        buf = np.empty((stop - start) * row, dtype=np.uint8)
        view, pos = memoryview(buf), t.offset + start * row
        while view:
            n = os.preadv(self.fd(t.shard), [view], pos)
            if n <= 0:
                raise ConversionError(t.shard, f"ended while reading tensor {name!r}", "re-download it")
            view, pos = view[n:], pos + n
        return buf.reshape(stop - start, row)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start:stop of the tensor (rows of its last axis), read into a new array (not memory-mapped:
        mapped pages would count in the process's resident memory): the whole tensor in its own shape, or a
        matrix of the rows. BF16 comes back as its uint16 bits."""
        self.check_dtype(name)
        t = self.tensors[name]
        data = self.read_bytes(name, start, stop).view(DTYPES[t.dtype])
        return data.reshape(t.shape if start == 0 and stop is None else (-1, t.shape[-1]))

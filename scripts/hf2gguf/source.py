"""Reading a Hugging Face model folder: config.json and safetensors weights, one tensor at a time.

Weights are read a chunk of rows at a time, never loaded whole. Pickle checkpoints (*.bin, *.pt, *.ckpt) are
refused: loading them runs arbitrary code.

Pre-quantized releases whose weights are whole codes with a scale beside them (peek.weight_scaling: FP8 releases,
quant_method "fp8", such as DeepSeek-V3/R1's and Qwen3's; llm-compressor's compressed-tensors FP8 and W8A8 int8
ones) are read as the values they stand for, as llama.cpp's converter dequantizes them: each weight W with its
scale (W_scale_inv, or W_scale) reads as float32(W) * scale, the scale repeated over blocks (the last ones cut to
the weight's shape) or, without blocks, broadcast per tensor or per row; the scales and the unused activation
scales are not tensors of the model. float32(W) is exact for float8 and int8 codes, and the product is one float32
multiplication, so the values are bit for bit the reference's.
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
from .peek import NotOurs, quantization, weight_scaling

INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# safetensors dtype -> numpy dtype of the raw data. BF16 has no numpy dtype: its bits are read as uint16.
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
SCALED = {"F8_E4M3", "F8_E5M2", "I8"}  # the codes of a scaled weight: float8, or int8 (W8A8 releases)


def float8_values(exponent_bits: int, finite: bool) -> np.ndarray:
    """The float32 value of each of the 256 codes of a float8 format with 1 sign bit, exponent_bits (bias
    2^(e-1) - 1) and the rest mantissa: e4m3fn (finite: no infinities, NaN only at S.1111.111) or e5m2 (IEEE-like:
    the top exponent holds the infinities and NaNs)."""
    mantissa_bits = 7 - exponent_bits
    codes = np.arange(256)
    exponent, mantissa = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1), codes & ((1 << mantissa_bits) - 1)
    bias = (1 << (exponent_bits - 1)) - 1
    fraction = mantissa / (1 << mantissa_bits)
    magnitude = np.where(exponent == 0, fraction * 2.0 ** (1 - bias), (1 + fraction) * 2.0 ** (exponent - bias))
    top = exponent == (1 << exponent_bits) - 1
    if finite:
        magnitude[top & (mantissa == (1 << mantissa_bits) - 1)] = np.nan
    else:
        magnitude[top] = np.where(mantissa[top] == 0, np.inf, np.nan)
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.float32)


FLOAT8 = {"F8_E4M3": float8_values(4, finite=True), "F8_E5M2": float8_values(5, finite=False)}


def unblocked_shape(scale: tuple[int, ...], weight: tuple[int, ...]) -> tuple[int, ...]:
    """A scale without blocks, with trailing dimensions of 1 up to the weight's (as llama.cpp's converter
    unsqueezes it), so that it broadcasts: () or (1,) for the tensor, (rows,) for each row."""
    return scale + (1,) * (len(weight) - len(scale))


def to_f32(array: np.ndarray, src_dtype: str) -> np.ndarray:
    """Values read by ModelFolder.read (BF16 as its uint16 bits) as float32, exactly."""
    if src_dtype == "BF16":  # bf16 is the high half of an f32: one widening copy and a shift
        bits = array.astype(np.uint32)
        bits <<= 16
        return bits.view(np.float32)
    return array.astype(np.float32, copy=False)


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

    @property
    def rows(self) -> int:
        """The rows of its last axis: a [n_expert, n_ff, n_embd] tensor has n_expert * n_ff."""
        return prod(self.shape[:-1]) if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.nbytes // max(1, self.rows)


@dataclass(frozen=True)
class Scale:
    """The scale of a weight of a release of scaled codes (W_scale_inv, or compressed-tensors' W_scale), and the
    block it applies to."""
    tensor: TensorInfo
    block: tuple[int, int] | None  # rows, columns; None: one scale per tensor, or per row


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
        self.scales: dict[str, Scale] = {}  # weight name -> its scale, in a release of scaled codes (FP8, W8A8)
        self._index_scales()
        self._fds: dict[Path, int] = {}

    def _index_scales(self) -> None:
        """A pre-quantized release's scales (peek.weight_scaling), taken out of the tensors: each goes with its
        weight (llama.cpp's converter dequantizes every such pair, whatever the architecture); the activation
        scales are dropped."""
        config = self.path / "config.json"
        try:
            scaling = weight_scaling(quantization(self.config))
        except NotOurs as e:
            raise ConversionError(config, f"declares {e}", "CONVERTER: auto (the default) in "
                                  "configurations/converter_args.yaml converts it with llama.cpp's converter when that "
                                  "reads it; or use the model's unquantized (bf16/f16) release") from None
        except ValueError as e:
            raise ConversionError(config, str(e), "re-download config.json") from None
        if scaling is None:
            return
        for name in list(self.tensors):
            if scaling.unused and name.endswith(scaling.unused):
                del self.tensors[name]
            elif name.endswith(scaling.suffix):
                scale = self.tensors.pop(name)
                weight = self.tensors.get(name[: -len(scaling.strip)])
                if weight is None:
                    raise ConversionError(scale.shard, f"holds {name!r} but not the weight it scales, "
                                          f"{name[: -len(scaling.strip)]!r}", "download every shard of the release")
                self.scales[weight.name] = Scale(scale, scaling.block)
                self._check_scale(weight, self.scales[weight.name])

    def _check_scale(self, weight: TensorInfo, scale: Scale) -> None:
        s = scale.tensor
        if s.dtype not in DTYPES:
            raise ConversionError(s.shard, f"tensor {s.name!r} has dtype {s.dtype}; a scale is F32, F16 or BF16",
                                  "re-download the release")
        if scale.block is None:
            shape = unblocked_shape(s.shape, weight.shape)
            fits = len(weight.shape) >= 2 and len(shape) == len(weight.shape) \
                and all(n in (1, w) for n, w in zip(shape, weight.shape))
            wanted = f"a shape that broadcasts to it (one value, or one per row {list(weight.shape[:-1])})"
        else:
            blocks = tuple(-(-n // b) for n, b in zip(weight.shape[-2:], scale.block))
            fits = len(weight.shape) >= 2 and s.shape == weight.shape[:-2] + blocks
            wanted = f"{list(weight.shape[:-2] + blocks)} (blocks of {list(scale.block)})"
        if not fits:
            raise ConversionError(s.shard, f"tensor {s.name!r} has shape {list(s.shape)}, but its weight "
                                  f"{list(weight.shape)} needs {wanted}", "re-download the release")

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
        if t.dtype not in DTYPES and not (t.dtype in SCALED and name in self.scales):
            raise ConversionError(
                t.shard, f"tensor {name!r} has dtype {t.dtype}; {', '.join(DTYPES)} weights convert, and float8 or "
                "int8 ones with their scales (a release whose config.json says quant_method fp8, or "
                "compressed-tensors)",
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
        return self.tensors[name].rows

    def row_bytes(self, name: str) -> int:
        return self.tensors[name].row_bytes

    def read_bytes(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start:stop of the tensor as their bytes, uint8 [rows, row bytes], whatever its dtype (a
        pre-quantized tensor's packed codes and scales, which are moved, never read as numbers)."""
        return self._bytes(self.tensors[name], start, stop)

    def _bytes(self, t: TensorInfo, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = t.rows if stop is None else stop
        row = t.row_bytes
        buf = np.empty((stop - start) * row, dtype=np.uint8)
        view, pos = memoryview(buf), t.offset + start * row
        while view:
            n = os.preadv(self.fd(t.shard), [view], pos)
            if n <= 0:
                raise ConversionError(t.shard, f"ended while reading tensor {t.name!r}", "re-download it")
            view, pos = view[n:], pos + n
        return buf.reshape(stop - start, row)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start:stop of the tensor (rows of its last axis), read into a new array (not memory-mapped:
        mapped pages would count in the process's resident memory): the whole tensor in its own shape, or a
        matrix of the rows. BF16 comes back as its uint16 bits; a scaled weight (FP8, W8A8) as its values, float32."""
        self.check_dtype(name)
        t = self.tensors[name]
        whole = start == 0 and stop is None
        stop = t.rows if stop is None else stop
        raw = self.read_bytes(name, start, stop)
        data = FLOAT8[t.dtype][raw] if t.dtype in FLOAT8 else raw.view(np.int8 if t.dtype == "I8" else DTYPES[t.dtype])
        if name in self.scales:
            data = to_f32(data, t.dtype) * self._scale_rows(t, self.scales[name], start, stop)
        return data.reshape(t.shape if whole else (-1, t.shape[-1]))

    def value_dtype(self, name: str) -> str:
        """The dtype of what read() gives: F32 for a scaled weight (its values), else the stored one."""
        return "F32" if name in self.scales else self.tensors[name].dtype

    def _scale_rows(self, weight: TensorInfo, scale: Scale, start: int, stop: int) -> np.ndarray:
        """The scale of each value of rows start:stop of weight, float32 [rows, columns] (or what broadcasts to it)."""
        s = scale.tensor
        values = to_f32(self._bytes(s).view(DTYPES[s.dtype]), s.dtype).reshape(-1)
        rows = np.arange(start, stop)
        if scale.block is None:  # broadcast: each row's index along the dimensions where the scale has more than one
            shape = unblocked_shape(s.shape, weight.shape)
            where = np.unravel_index(rows, weight.shape[:-1])
            index = np.ravel_multi_index([i if n > 1 else 0 for i, n in zip(where, shape[:-1])], shape[:-1])
            return values.reshape(-1, shape[-1])[index]
        (rows_per_matrix, columns), (block_rows, block_columns) = weight.shape[-2:], scale.block
        grid = values.reshape(-1, s.shape[-2], s.shape[-1])  # [matrices, row blocks, column blocks]
        matrix, row = np.divmod(rows, rows_per_matrix)
        return np.repeat(grid[matrix, row // block_rows], block_columns, axis=1)[:, :columns]

"""Cheap look-ups in a model folder that need only the standard library (the workflow calls them at parse time)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER = 100 * 2**20
# quantization_config.quant_method of the pre-quantized releases our converter reads: FP8 with block scales
# (dequantized by source.ModelFolder, as llama.cpp's converter does) and gpt-oss's MXFP4 experts (kept as they are)
OUR_QUANT_METHODS = ("fp8", "mxfp4")


def quantization(config: dict) -> dict | None:
    """config.json's quantization_config (or its text_config's), when it names a quant_method."""
    for c in (config, config.get("text_config") or {}):
        q = c.get("quantization_config") if isinstance(c, dict) else None
        if isinstance(q, dict) and q.get("quant_method"):
            return q
    return None


def safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER:
            raise ValueError(f"header of {n} bytes is larger than {MAX_HEADER}")
        return json.loads(f.read(n))


def weight_dtype(folder: str | Path) -> str | None:
    """The safetensors dtype of most weight bytes (2-D tensors), or None if no header can be read."""
    sizes: dict[str, int] = {}
    try:
        for shard in sorted(Path(folder).glob("*.safetensors")):
            for name, t in safetensors_header(shard).items():
                if name != "__metadata__" and len(t["shape"]) == 2:
                    start, end = t["data_offsets"]
                    sizes[t["dtype"]] = sizes.get(t["dtype"], 0) + end - start
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return max(sizes, key=sizes.get) if sizes else None


def full_precision_type(folder: str | Path) -> str:
    """The GGUF type that loses nothing for this checkpoint: BF16 for bf16 weights, F16 for the rest."""
    return "BF16" if weight_dtype(folder) == "BF16" else "F16"

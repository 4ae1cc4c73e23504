"""Cheap look-ups in a model folder that need only the standard library (the workflow calls them at parse time)."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER = 100 * 2**20
# compressed-tensors formats whose weights are stored whole with a scale beside them (float8 or int8 codes)
SCALED_FORMATS = ("float-quantized", "int-quantized", "naive-quantized")


def quantization(config: dict) -> dict | None:
    """config.json's quantization_config (or its text_config's), when it names a quant_method."""
    for c in (config, config.get("text_config") or {}):
        q = c.get("quantization_config") if isinstance(c, dict) else None
        if isinstance(q, dict) and q.get("quant_method"):
            return q
    return None


class NotOurs(ValueError):
    """A quantization our converter does not read (llama.cpp's may)."""


@dataclass(frozen=True)
class Scaling:
    """How a pre-quantized release that our converter reads scales its weights: each tensor whose name ends with
    suffix scales the weight named as it without strip, over blocks of block (rows, columns) or, without blocks,
    broadcast; the tensors ending with unused are activation scales, not written."""
    suffix: str
    strip: str
    block: tuple[int, int] | None
    unused: tuple[str, ...] = ()


def weight_scaling(q: dict | None) -> Scaling | None:
    """The Scaling of a quantization_config that our converter dequantizes as llama.cpp's converter does: "fp8"
    (DeepSeek-V3's, Qwen3's FP8 releases: W_scale_inv, weight_block_size) and "compressed-tensors" with one group
    of whole weights and a scale per channel or per block (W_scale, the weights' block_structure: the FP8-dynamic,
    FP8-block and W8A8 int8 releases made with llm-compressor). None for no quantization and for gpt-oss's "mxfp4"
    (its experts are moved as they are). NotOurs, saying why, for any other; ValueError for a block that is not
    two sizes."""
    if q is None or q["quant_method"] == "mxfp4":
        return None
    method = q["quant_method"]
    if method == "fp8":
        block = q.get("weight_block_size")
        where = "quantization_config.weight_block_size"
        unused = (".activation_scale", "_activation_scale")
        suffix, strip = "_scale_inv", "_scale_inv"
    elif method == "compressed-tensors":
        groups = q.get("config_groups") if isinstance(q.get("config_groups"), dict) else {}
        if q.get("format") not in SCALED_FORMATS:
            raise NotOurs(f"compressed-tensors format {q.get('format')!r}, which our converter does not read (it reads "
                          f"{', '.join(SCALED_FORMATS)})")
        group = next(iter(groups.values())) if len(groups) == 1 else None
        weights = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict):
            raise NotOurs(f"compressed-tensors with {len(groups)} config_groups; our converter reads one")
        if weights.get("strategy") not in ("channel", "block") or weights.get("group_size") is not None:
            raise NotOurs(f"compressed-tensors weights of strategy {weights.get('strategy')!r} (group_size "
                          f"{weights.get('group_size')}); our converter, like llama.cpp's, reads a scale per channel "
                          "or per block")
        block, where = weights.get("block_structure"), "quantization_config's weights.block_structure"
        # static activation and KV-cache scales: unused by a GGUF (llama.cpp's converter does not drop them here,
        # and stops on them: "Can not map tensor")
        unused, suffix, strip = (".input_scale", ".k_scale", ".v_scale"), ".weight_scale", "_scale"
    else:
        raise NotOurs(f"{method} weights, which our converter does not dequantize")
    if block is not None and not (isinstance(block, list) and len(block) == 2
                                  and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise ValueError(f"{where} is {block!r}; a block is two positive sizes (rows, columns), e.g. [128, 128]")
    return Scaling(suffix, strip, tuple(block) if block else None, unused)


def ours_reads(q: dict | None) -> bool:
    """Whether our converter reads the weights of a release with this quantization_config (or none); ValueError for
    a malformed one."""
    try:
        weight_scaling(q)
    except NotOurs:
        return False
    return True


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

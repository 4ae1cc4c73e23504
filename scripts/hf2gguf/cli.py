"""python scripts/convert.py MODEL_DIR -o OUT.gguf [--outtype auto|F32|F16|BF16|Q8_0]"""
from __future__ import annotations

import argparse
import ctypes
import sys

from . import __version__
from .architectures import REGISTRY
from .convert import OUTTYPES, convert
from .errors import ConversionError


def keep_big_buffers_out_of_the_heap() -> None:
    """glibc raises its mmap threshold each time a big buffer is freed, so later chunk-sized buffers come
    from the heap, which is rarely returned to the system. A fixed threshold keeps the peak RSS at a few
    chunks' worth, whatever the model's size."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except (OSError, AttributeError):  # not glibc
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="convert.py",
        description="Convert a Hugging Face model folder (config.json, *.safetensors, tokenizer files) to GGUF. "
                    "Pure Python: no torch, no transformers; pickle weights are refused.",
        epilog=f"Supported architectures: {', '.join(sorted(REGISTRY))}.")
    p.add_argument("model_dir", help="the Hugging Face model folder")
    p.add_argument("-o", "--output", required=True, help="the GGUF file to write (written atomically)")
    p.add_argument("--outtype", default="auto", choices=["auto", *OUTTYPES],
                   help="tensor type of the weights; auto = BF16 for bf16 checkpoints, else F16 (default: auto)")
    p.add_argument("--name", help="general.name (default: the model folder's name)")
    p.add_argument("--threads", type=int, help="worker threads (default: the CPU count)")
    p.add_argument("--fingerprint", help="the workflow's fingerprint of the model folder, recorded as "
                   "hf2gguf.source.sha256")
    p.add_argument("--version", action="version", version=f"hf2gguf {__version__}")
    a = p.parse_args(argv)
    keep_big_buffers_out_of_the_heap()
    try:
        convert(a.model_dir, a.output, a.outtype, a.name, threads=a.threads, fingerprint=a.fingerprint)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

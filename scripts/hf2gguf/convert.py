"""Convert a Hugging Face model folder to one GGUF file, streaming one tensor at a time."""
from __future__ import annotations

import errno
import sys
import time
from contextlib import contextmanager, suppress
from math import prod
from pathlib import Path

import gguf
import numpy as np

from .architectures import TensorPlan, architecture_for
from .atomic import atomic_path
from .errors import ConversionError
from .peek import full_precision_type
from .source import ModelFolder

Q = gguf.GGMLQuantizationType
OUTTYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0}
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}
ALWAYS_F32 = ("position_embd.weight",)


def tensor_type(plan: TensorPlan, outtype: Q, say=None) -> Q:
    """Norms, biases, other 1-D tensors and the position embedding stay F32; rows that do not fit the
    block size of a quantized type fall back to F16."""
    if len(plan.shape) <= 1 or plan.name.endswith("_norm.weight") or plan.name in ALWAYS_F32:
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[outtype]
    if plan.shape[-1] % block:
        if say:
            say(f"{plan.name}: row width {plan.shape[-1]} is not a multiple of {block}; writing F16 instead of "
                f"{outtype.name}")
        return Q.F16
    return outtype


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return prod(shape) // block * size


def encode(array: np.ndarray, src_dtype: str, qtype: Q) -> np.ndarray:
    """Source data (BF16 as uint16 bits) -> the bytes of qtype."""
    if (src_dtype, qtype) in (("F32", Q.F32), ("F16", Q.F16), ("BF16", Q.BF16)):
        return np.ascontiguousarray(array)  # bit-exact copy
    if src_dtype == "BF16":
        f32 = gguf.quants.dequantize(np.ascontiguousarray(array).view(np.uint8), Q.BF16)
    else:
        f32 = np.ascontiguousarray(array, dtype=np.float32)
    return gguf.quants.quantize(f32, qtype)


@contextmanager
def disk_full_is_an_error(out: Path):
    try:
        yield
    except OSError as e:
        short_write = e.errno is None and "written" in str(e)  # numpy's tofile on a full disk
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) and not short_write:
            raise
        raise ConversionError(out.parent, f"the disk is full ({e.strerror or e}) while writing {out.name}; nothing "
                              "was left behind", "free some space, or set OUTPUTS_DIR to a larger disk") from None


def write(w: gguf.GGUFWriter, model: ModelFolder, arch, vocab, plans: list[TensorPlan], types: list[Q],
          qtype: Q, name: str, log) -> None:
    """Streams the GGUF: tensor infos first, then header, KV and tensor info, then the data in order."""
    w.add_name(name)  # every KV is a pure function of the inputs: no dates, no absolute paths
    arch.set_kv(w)
    w.add_file_type(FILE_TYPES[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.write(w)
    for p, t in zip(plans, types):
        w.add_tensor_info(p.name, p.shape, np.float32, nbytes(p.shape, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    width = len(str(len(plans)))
    for i, (p, t) in enumerate(zip(plans, types), 1):
        src = model.tensors[p.source]
        data = model.load(p.source)
        if p.transform:
            data = p.transform(data)
        w.write_tensor_data(encode(data, src.dtype, t))
        log(f"[{i:{width}}/{len(plans)}] {p.name:<32} {src.dtype:>4} -> {t.name:<5} {list(p.shape)}")


def convert(model_dir: str | Path, out: str | Path, outtype: str = "auto", name: str | None = None,
            log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
    """Writes out atomically: a temporary file beside it, renamed when complete."""
    start = time.monotonic()
    model = ModelFolder(model_dir)
    arch = architecture_for(model)
    if outtype == "auto":
        outtype = full_precision_type(model.path)
    if outtype not in OUTTYPES:
        raise ConversionError(out, f"unknown output type {outtype!r}", f"use one of auto, {', '.join(OUTTYPES)}")
    qtype = OUTTYPES[outtype]
    plans = arch.plan()
    embd = next(p for p in plans if p.name == "token_embd.weight")
    vocab = arch.vocab(n_vocab=embd.shape[0])
    types = [tensor_type(p, qtype, log) for p in plans]

    out = Path(out)
    log(f"converting {model.path} ({arch.arch_name}, {len(plans)} tensors) to {outtype}: {out}")
    with atomic_path(out) as tmp, disk_full_is_an_error(out):
        w = gguf.GGUFWriter(tmp, arch.arch_name)
        try:
            write(w, model, arch, vocab, plans, types, qtype, name or model.path.name, log)
        finally:
            with suppress(OSError):  # on a full disk, closing fails too; the file is removed regardless
                w.close()
    size = out.stat().st_size
    log(f"wrote {out} ({size / 2**20:.1f} MiB) in {time.monotonic() - start:.1f} s")
    return out

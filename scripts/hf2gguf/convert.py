"""Convert a Hugging Face model folder to one GGUF file, streaming.

The header, metadata and tensor infos are written by gguf.GGUFWriter (its public methods only); the tensor data
section is then filled by worker threads, each handling a chunk of rows at its precomputed offset (pread, convert, pwrite). Chunks
whose type does not change are copied by the kernel (copy_file_range). Memory holds a few chunks at a time,
whatever the model's size."""
from __future__ import annotations

import errno
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from math import prod
from pathlib import Path

import gguf
import numpy as np

from .architectures import Part, TensorPlan, architecture_for
from .atomic import atomic_path
from .errors import ConversionError
from .peek import full_precision_type
from .source import ModelFolder, to_f32

Q = gguf.GGMLQuantizationType
OUTTYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0}
ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}
# kept F32 whatever the type, as llama.cpp's converter does: the position embedding and the expert routers
ALWAYS_F32 = ("position_embd.weight", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")


def tensor_type(plan: TensorPlan, outtype: Q, say=None) -> Q:
    """A tensor already in a block type keeps it. Norms, biases (every tensor not named .weight, the 2-D expert
    biases too), other 1-D tensors and the position embedding stay F32; rows that do not fit the block size of a
    quantized type fall back to F16."""
    if plan.raw:
        return plan.raw.qtype
    if len(plan.shape) <= 1 or plan.name.endswith("_norm.weight") or plan.name.endswith(ALWAYS_F32) \
            or not plan.name.endswith(".weight"):
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


SAME = {("F32", Q.F32), ("F16", Q.F16), ("BF16", Q.BF16)}  # written bit-exact, without conversion
CHUNK_BYTES = 8 * 2**20  # source bytes per unit of work


ELEMENTWISE = (Q.F32, Q.F16, Q.BF16)  # converted value by value: layout changes can come after
TILE = 256


def contiguous(a: np.ndarray) -> np.ndarray:
    """a in C order. A transposed 2-D view is copied tile by tile, which keeps both sides in cache (about
    twice as fast as numpy's plain copy)."""
    if a.flags.c_contiguous:
        return a
    if a.ndim != 2 or not a.flags.f_contiguous:
        return np.ascontiguousarray(a)
    out = np.empty(a.shape, a.dtype)
    for i in range(0, a.shape[0], TILE):
        for j in range(0, a.shape[1], TILE):
            out[i:i + TILE, j:j + TILE] = a[i:i + TILE, j:j + TILE]
    return out


def encode(array: np.ndarray, src_dtype: str, qtype: Q) -> np.ndarray:
    """Source data (BF16 as uint16 bits), in C order -> the values of qtype (its bytes, for block types)."""
    if (src_dtype, qtype) in SAME:
        return array
    f32 = to_f32(array, src_dtype)
    if qtype == Q.F16:
        return f32.astype(np.float16)
    if qtype == Q.BF16:  # one uint16 per value, so that a layout change applies to values, not bytes
        return gguf.quants.quantize(f32, qtype).view(np.uint16)
    return gguf.quants.quantize(f32, qtype)


@dataclass(frozen=True)
class Piece:
    """Rows start:stop of one part of a tensor (all of it when whole), and where their bytes go in the output."""
    plan: TensorPlan
    qtype: Q
    part: Part | None  # None for a tensor made from config.json
    start: int
    stop: int
    offset: int
    whole: bool  # the whole part: transforms, value changes and 1-D tensors are handled whole


def padded(size: int) -> int:
    """size rounded up to the GGUF alignment (general.alignment is never written, so the default holds)."""
    return size + -size % ALIGNMENT


def pieces(model: ModelFolder, plans: list[TensorPlan], types: list[Q], data_start: int):
    """Each tensor's parts at their offsets, in chunks of about CHUNK_BYTES of source: a tensor made of many
    checkpoint tensors (stacked experts) is never held whole."""
    offset = data_start
    for p, t in zip(plans, types):
        size = nbytes(p.shape, t)
        if p.raw:  # rows of bytes, in chunks of about CHUNK_BYTES
            rows, row = prod(p.shape[:-1]), nbytes((1, p.shape[-1]), t)
            step = max(1, CHUNK_BYTES // row)
            for start in range(0, rows, step):
                yield Piece(p, t, None, start, min(start + step, rows), offset + start * row, False)
        elif not p.parts:
            yield Piece(p, t, None, 0, 1, offset, True)
        at = offset
        for part in p.parts:
            stop = model.rows(part.tensor) if part.stop is None else part.stop
            rows = stop - part.start
            width = model.tensors[part.tensor].shape[-1]
            width = width if part.columns is None else len(range(width)[slice(*part.columns)])
            shape = model.tensors[part.tensor].shape if part.whole else (rows, width)
            part_size = nbytes(shape, t)
            whole = part.transform is not None or p.values is not None or len(p.shape) < 2 or part.columns is not None
            step = rows if whole else max(1, CHUNK_BYTES // max(1, model.row_bytes(part.tensor)))
            for start in range(part.start, stop, step):
                end = min(start + step, stop)
                yield Piece(p, t, part, start, end, at + (start - part.start) * (part_size // rows), whole)
            at += part_size
        if p.parts and at - offset != size:
            raise AssertionError(f"{p.name}: its parts hold {at - offset} bytes, its shape {list(p.shape)} {size}")
        offset += padded(size)


def copy_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, length: int) -> None:
    try:
        while length:
            n = os.copy_file_range(src_fd, dst_fd, length, src_off, dst_off)
            if n <= 0:
                raise OSError(errno.EIO, "copy_file_range copied nothing")
            src_off, dst_off, length = src_off + n, dst_off + n, length - n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        while length:  # no kernel copy between these files: go through memory
            data = os.pread(src_fd, min(length, CHUNK_BYTES), src_off)
            if not data:
                raise OSError(errno.EIO, "source ended early")
            pwrite_all(dst_fd, data, dst_off)
            src_off, dst_off, length = src_off + len(data), dst_off + len(data), length - len(data)


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[n:], offset + n


def source_values(model: ModelFolder, piece: Piece) -> tuple[np.ndarray, str]:
    """The piece's values and their dtype name, after the plan's value change if it has one."""
    p, part = piece.plan, piece.part
    if part is None:
        return p.data, "F32"
    dtype = model.value_dtype(part.tensor)
    if piece.whole and part.whole:
        data = model.read(part.tensor)
    else:
        data = model.read(part.tensor, piece.start, piece.stop)
    if part.columns is not None:
        data = data[:, slice(*part.columns)]
    if p.values is None:
        return data, dtype
    if dtype not in ("F16", "F32"):  # changed in F32, as llama.cpp's converter does (it widens BF16 and F64 first)
        data, dtype = to_f32(data, dtype), "F32"
    data = p.values(data)
    return data, {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}[data.dtype]


def process(model: ModelFolder, piece: Piece, dst_fd: int) -> None:
    p, part = piece.plan, piece.part
    if p.raw:
        out = p.raw.read(piece.start, piece.stop)
        row = nbytes((1, p.shape[-1]), piece.qtype)
        if out.dtype != np.uint8 or out.shape != (piece.stop - piece.start, row):
            raise AssertionError(f"{p.name}: rows {piece.start}:{piece.stop} came as {out.dtype} {list(out.shape)}, "
                                 f"not uint8 [{piece.stop - piece.start}, {row}]")
        pwrite_all(dst_fd, contiguous(out), piece.offset)
        return
    src = model.tensors[part.tensor] if part else None
    transform = part.transform if part else None
    if src and transform is None and part.columns is None and p.values is None and part.tensor not in model.scales \
            and (src.dtype, piece.qtype) in SAME:  # stored as written (a scaled weight's bytes are not its values)
        row = model.row_bytes(part.tensor)
        copy_range(model.fd(src.shard), src.offset + piece.start * row, dst_fd, piece.offset,
                   (piece.stop - piece.start) * row)
        return
    data, dtype = source_values(model, piece)
    if transform is None:
        out = encode(data, dtype, piece.qtype)
    elif piece.qtype in ELEMENTWISE:  # convert in the source's layout (fast), then change the layout
        out = transform(encode(data, dtype, piece.qtype))
    else:  # block types quantize rows of the final layout
        out = encode(contiguous(transform(to_f32(data, dtype))), "F32", piece.qtype)
    pwrite_all(dst_fd, contiguous(out), piece.offset)


@contextmanager
def disk_full_is_an_error(out: Path):
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ConversionError(out.parent, f"the disk is full ({e.strerror or e}) while writing {out.name}; nothing "
                              "was left behind", "free some space, or set OUTPUTS_DIR to a larger disk") from None


def provenance(model: ModelFolder, fingerprint: str | Path | None, outtype: str) -> dict[str, str]:
    """KV pairs saying where the file came from: the converter's version, the precision, a digest over the
    source files' sha256 (from the workflow's fingerprint file) and, for a folder fetched from the Hub, the
    repository and commit."""
    import hashlib
    import json

    from . import __version__

    kv = {"hf2gguf.version": __version__, "hf2gguf.precision": outtype}
    if fingerprint:
        files = json.loads(Path(fingerprint).read_text())["files"]
        kv["hf2gguf.source.sha256"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    hub = model.path / ".hf2gguf-source.json"
    if hub.exists():
        source = json.loads(hub.read_text())
        kv["hf2gguf.source.repo"] = source["repo"]
        kv["hf2gguf.source.commit"] = source["commit"]
    return kv


def write(w: gguf.GGUFWriter, path: Path, model: ModelFolder, arch, vocab, plans: list[TensorPlan],
          types: list[Q], qtype: Q, name: str, log, threads: int, extra_kv: dict[str, str]) -> None:
    """Tensor infos first, then header, KV and tensor info; then the data, in parallel chunks."""
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)  # every KV is a pure function of the inputs: no dates, no absolute paths
    for key, value in extra_kv.items():
        w.add_string(key, value)
    arch.set_kv(w)
    if arch.writes_file_type:
        w.add_file_type(arch.file_type(FILE_TYPES[qtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.write(w)
    for p, t in zip(plans, types):
        w.add_tensor_info(p.name, p.shape, np.float32, nbytes(p.shape, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as f:
        write_data(f.fileno(), model, plans, types, log, threads)


def write_data(fd: int, model: ModelFolder, plans: list[TensorPlan], types: list[Q], log, threads: int) -> None:
    """The tensor data, after the header, KV and tensor infos that the file holds."""
    data_start = padded(os.fstat(fd).st_size)
    total = data_start + sum(padded(nbytes(p.shape, t)) for p, t in zip(plans, types))
    os.ftruncate(fd, total)  # zero-filled: the padding between tensors
    left = {p.name: 0 for p in plans}
    work = list(pieces(model, plans, types, data_start))
    for piece in work:
        left[piece.plan.name] += 1
    done, width = 0, len(str(len(plans)))

    def finished(piece: Piece) -> None:
        nonlocal done
        left[piece.plan.name] -= 1
        if not left[piece.plan.name]:
            done += 1
            dtype = model.tensors[piece.plan.source].dtype if piece.plan.source else "F32"
            log(f"[{done:{width}}/{len(plans)}] {piece.plan.name:<32} {dtype:>7} -> {piece.qtype.name:<5} "
                f"{list(piece.plan.shape)}")

    with ThreadPoolExecutor(max(1, threads)) as pool:
        running: dict = {}
        for piece in work:
            while len(running) >= threads:  # as many chunks in memory as threads
                for f in wait(running, return_when=FIRST_COMPLETED).done:
                    f.result()
                    finished(running.pop(f))
            running[pool.submit(process, model, piece, fd)] = piece
        for f in list(running):
            f.result()
            finished(running.pop(f))


def convert(model_dir: str | Path, out: str | Path, outtype: str = "auto", name: str | None = None,
            log=lambda msg: print(msg, file=sys.stderr, flush=True), threads: int | None = None,
            fingerprint: str | Path | None = None) -> Path:
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
    for note in arch.notes:
        log(note)
    embd = next(p for p in plans if p.name == "token_embd.weight")
    vocab = arch.vocab(n_vocab=embd.shape[0])
    types = [tensor_type(p, qtype, log) for p in plans]

    out = Path(out)
    log(f"converting {model.path} ({arch.arch_name}, {len(plans)} tensors) to {outtype}: {out}")
    with atomic_path(out) as tmp, disk_full_is_an_error(out):
        w = gguf.GGUFWriter(tmp, arch.arch_name)
        try:
            write(w, tmp, model, arch, vocab, plans, types, qtype, name or model.path.name, log,
                  threads or os.cpu_count() or 1, provenance(model, fingerprint, outtype))
        finally:
            model.close()
            with suppress(OSError):  # on a full disk, closing fails too; the file is removed regardless
                w.close()
    size = out.stat().st_size
    log(f"wrote {out} ({size / 2**20:.1f} MiB) in {time.monotonic() - start:.1f} s")
    return out

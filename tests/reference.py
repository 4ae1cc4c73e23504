#!/usr/bin/env python3
"""Our converter against llama.cpp's own convert_hf_to_gguf.py, from the same pinned sdist (b11312).

Helpers for tests/test_reference.py and tests/test_logits.py:
- fixture checkpoints (generators/models.py) built once per generator version and cached under
  $HF2GGUF_CACHE/fixtures/<key>/ (default ~/.cache/hf2gguf), where <key> hashes the generator sources and the
  torch/transformers versions;
- the reference converter's GGUFs of them, cached beside the checkpoints. It runs in a subprocess with
  PYTHONPATH=<src>/gguf-py, so that it uses b11312's gguf-py and not the PyPI package ours uses. It needs torch
  and transformers (test tools); HF2GGUF_REFERENCE_PYTHON picks another interpreter for it;
- compare(ours, reference): two GGUFs read (read_gguf: gguf.GGUFReader's view of the file, checked against it,
  without its 10-20 s on a 280k-merge vocabulary) and diffed into one line per differing tensor or KV.

    python tests/reference.py --table [VARIANT ...]   # converts, compares, prints the table (markdown)
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for p in (TESTS, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import llama_toolchain  # noqa: E402
from generators.models import VARIANTS  # noqa: E402

OUTTYPES = ("F32", "F16", "BF16", "Q8_0")

# KV pairs that may differ between our GGUF and the reference's. Every other key, with its value type, must be
# present in both and equal.
ALLOWED_KV = {
    "general.name": "a display name. The reference guesses it from the folder name or a model card "
                    "(\"Llama2\" for llama2/); ours is the workflow's model name. llama.cpp only prints it.",
    "general.basename": "guessed by the reference from the folder name; authorship metadata, not a model property",
    "general.finetune": "guessed by the reference from the folder name; authorship metadata",
    "general.version": "guessed by the reference from the folder name; authorship metadata",
    "general.organization": "guessed by the reference from the folder name; authorship metadata",
    "general.size_label": "a leaderboard label (\"8.3M\") the reference derives from the folder name or the "
                          "parameter count; llama.cpp never reads it",
}
ALLOWED_KV_PREFIXES = {
    "hf2gguf.": "our provenance (converter version, precision, source digest): what made the file, not what is "
                "in it",
}


# KV arrays compared as sets: the reference writes them in the order of a Python set of strings, which changes
# from one process to the next (hash randomisation)
UNORDERED_KV = {"tokenizer.chat_templates": "gguf-py's add_chat_template collects the names of a list of named "
                                            "templates (Command-R's) in a set"}


def allowed_kv(key: str) -> bool:
    return key in ALLOWED_KV or key.startswith(tuple(ALLOWED_KV_PREFIXES))


# --- fixtures and the reference converter's outputs, cached -------------------------------------------------
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


@lru_cache(maxsize=1)
def fixtures_dir() -> Path:
    """Cache folder for this version of the generators (their sources, torch, transformers); decided once per
    process, so that an edit during a run does not move the fixtures away from it."""
    h = hashlib.sha256()
    for f in sorted((TESTS / "generators").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    for dist in ("torch", "transformers", "tokenizers", "sentencepiece"):
        h.update(f"{dist}={_version(dist)}\n".encode())
    return llama_toolchain.cache_root() / "fixtures" / h.hexdigest()[:16]


@contextmanager
def locked(folder: Path):
    """One builder at a time per cache folder (parallel pytest runs, several engineers)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


STALE_AFTER_S = 24 * 3600


def prune_other_versions(root: Path) -> None:
    """Fixture sets of other generator versions (about 1 GB each) go once unused for a day."""
    (root / ".used").touch()
    for other in root.parent.iterdir():
        used = other / ".used"
        if other == root or not other.is_dir():
            continue
        if not used.exists() or time.time() - used.stat().st_mtime > STALE_AFTER_S:
            shutil.rmtree(other, ignore_errors=True)


def ensure_models(names, log=print) -> dict[str, Path]:
    """The fixture folders of these variants, built in one subprocess (torch stays out of the caller)."""
    root = fixtures_dir()
    with locked(root):
        prune_other_versions(root)
        missing = [n for n in names if not (root / n / "reference_logits.npz").exists()]
        if missing:
            log(f"building fixtures {', '.join(missing)} in {root}")
            start = time.monotonic()
            proc = subprocess.run([sys.executable, str(TESTS / "generators" / "models.py"), "--out", str(root),
                                   *missing], capture_output=True, text=True, env=_quiet_env())
            if proc.returncode:
                raise RuntimeError(f"building fixtures {missing} failed:\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}")
            log(f"built {len(missing)} fixtures in {time.monotonic() - start:.0f} s")
    return {n: root / n for n in names}


def reference_source() -> Path:
    return llama_toolchain.extract_source(llama_toolchain.cache_root())


def reference_python(variant: str | None = None) -> str:
    """The interpreter llama.cpp's converter runs in: HF2GGUF_REFERENCE_PYTHON or this one; for a variant whose
    reference_env is "transformers4", the workflow's fallback environment (transformers 4.57.6, as llama.cpp pins
    it; built once per machine by scripts/reference_converter.py)."""
    if variant is not None and VARIANTS[variant].reference_env == "transformers4":
        import reference_converter

        return reference_converter.build_env()
    return os.environ.get("HF2GGUF_REFERENCE_PYTHON") or sys.executable


def _quiet_env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", **extra}


@dataclass
class ReferenceOutput:
    path: Path | None  # the GGUF, or None when the reference converter failed
    log: Path


def ensure_reference(names, outtypes=OUTTYPES, log=print) -> dict[tuple[str, str], ReferenceOutput]:
    """llama.cpp's convert_hf_to_gguf.py on each (variant, outtype), cached beside the fixtures. A failure is
    cached too (its log), as the inputs that caused it are."""
    models = ensure_models(names, log)
    pythons = {n: reference_python(n) for n in names}
    out: dict[tuple[str, str], ReferenceOutput] = {}
    jobs = []
    root = fixtures_dir()
    with locked(root):
        for n in names:
            interpreter = hashlib.sha256(pythons[n].encode()).hexdigest()[:8]
            folder = root / f"{n}.reference-{interpreter}"
            for t in outtypes:
                gguf_path, log_path = folder / f"{t}.gguf", folder / f"{t}.log"
                out[n, t] = ReferenceOutput(gguf_path if gguf_path.exists() else None, log_path)
                if not log_path.exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    jobs.append({"model": str(models[n]), "arch": VARIANTS[n].arch, "outtype": t,
                                 "out": str(gguf_path), "log": str(log_path), "python": pythons[n]})
        for python in dict.fromkeys(j["python"] for j in jobs):  # one driver per interpreter
            group = [j for j in jobs if j["python"] == python]
            log(f"running llama.cpp's convert_hf_to_gguf.py ({len(group)} conversions)")
            start = time.monotonic()
            src = reference_source()
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump({"src": str(src), "jobs": group, "parallel": min(2, os.cpu_count() or 1)}, f)
            try:
                proc = subprocess.run([python, str(Path(__file__).resolve()), "--drive", f.name],
                                      capture_output=True, text=True,
                                      env=_quiet_env(PYTHONPATH=str(src / "gguf-py")))
            finally:
                os.unlink(f.name)
            if proc.returncode:
                raise RuntimeError(f"the reference converter's driver failed:\n{proc.stderr[-6000:]}")
            log(f"reference conversions took {time.monotonic() - start:.0f} s")
        if jobs:
            for n in names:
                for t in outtypes:
                    p = out[n, t].log.with_suffix(".gguf")
                    out[n, t].path = p if p.exists() else None
    return out


def _drive(jobs_file: str) -> None:
    """Runs inside the reference interpreter: imports convert_hf_to_gguf (torch, transformers, b11312's gguf-py)
    once, then forks one child per conversion, which runs the script's main() with its usual arguments."""
    spec = json.loads(Path(jobs_file).read_text())
    src = Path(spec["src"])
    sys.path[:] = [str(src)] + [p for p in sys.path if p not in (str(TESTS), str(ROOT / "scripts"))]
    import gguf

    if not Path(gguf.__file__).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"the reference must use {src}/gguf-py, not {gguf.__file__}")
    import convert_hf_to_gguf
    import conversion
    from transformers import AutoConfig, AutoTokenizer

    for job in spec["jobs"]:  # import every module the children need while there is one process
        conversion.get_model_class(job["arch"])
        AutoConfig.from_pretrained(job["model"])
    for model in {j["model"]: None for j in spec["jobs"]}:
        try:
            AutoTokenizer.from_pretrained(model)
        except Exception:  # the child reports it, in the reference's own words
            pass

    running: dict[int, dict] = {}

    def reap() -> None:
        pid, status = os.wait()
        job = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        tmp = Path(job["out"] + ".tmp")
        if code == 0 and tmp.exists():
            os.replace(tmp, job["out"])
        else:
            tmp.unlink(missing_ok=True)
            with open(job["log"], "a") as f:
                f.write(f"\nexit status {code}\n")

    for job in spec["jobs"]:
        while len(running) >= spec["parallel"]:
            reap()
        pid = os.fork()
        if pid == 0:  # child: the reference's own command line
            code = 1
            try:
                fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.argv = ["convert_hf_to_gguf.py", job["model"], "--outtype", job["outtype"].lower(),
                            "--outfile", job["out"] + ".tmp"]
                convert_hf_to_gguf.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        running[pid] = job
    while running:
        reap()


# --- comparison ------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    tensors: list[str] = field(default_factory=list)  # one line per differing tensor
    kvs: list[str] = field(default_factory=list)  # one line per differing key
    same_order: bool = True
    error: str | None = None  # a converter failed

    @property
    def equal(self) -> bool:
        return self.error is None and not self.tensors and not self.kvs and self.same_order

    def differing_keys(self) -> list[str]:
        return [line.split(":", 1)[0] for line in self.kvs]

    def report(self) -> str:
        if self.error:
            return self.error
        lines = [f"tensor {t}" for t in self.tensors] + [f"KV {k}" for k in self.kvs]
        if not self.same_order:
            lines.append("tensor order differs")
        return "\n".join(lines) or "identical (apart from the allowed KVs)"


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # GGUF order (ggml's ne: the fastest-varying dimension first)
    type: "gguf.GGMLQuantizationType"
    raw: np.ndarray  # the tensor's bytes (uint8, memory-mapped)

    def values(self) -> np.ndarray:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[self.type]
        rows = self.raw.reshape(-1, self.shape[0] // block * size) if self.shape else self.raw
        return gguf.quants.dequantize(rows, self.type).astype(np.float64).reshape(-1)


@dataclass
class GGUFFile:
    version: int
    kvs: dict[str, tuple[str, object]]  # key -> (value type, value); arrays: ("ARRAY[type]", list)
    tensors: list[Tensor]
    data: np.memmap  # the whole file; flush() after changing tensors of a file opened with mode "r+"


def read_gguf(path: Path, mode: str = "r") -> GGUFFile:
    """Header, KV pairs and tensors of a GGUF file. gguf.GGUFReader makes a numpy view per array element and
    takes 10-20 s on a vocabulary with 280k merges; this reads the same structure in a fraction of a second
    (test_reference.py checks that both agree)."""
    import struct

    import gguf

    V = gguf.GGUFValueType
    scalar = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i", V.FLOAT32: "f",
              V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}
    data = np.memmap(path, np.uint8, mode)
    buf = memoryview(data)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    pos = 24

    def read(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal pos
        n = read("Q")
        pos += n
        return bytes(buf[pos - n:pos]).decode("utf-8")

    def value(t: gguf.GGUFValueType):
        nonlocal pos
        if t == V.STRING:
            return string()
        if t == V.ARRAY:
            et, count = V(read("I")), read("Q")
            if et in scalar and et != V.BOOL:
                dt = np.dtype("<" + scalar[et])
                items = np.frombuffer(buf, dt, count, pos).tolist()
                pos += dt.itemsize * count
                return f"ARRAY[{et.name}]", items
            return f"ARRAY[{et.name}]", [value(et) for _ in range(count)]
        return read(scalar[t])

    kvs = {}
    for _ in range(n_kv):
        key = string()
        t = V(read("I"))
        v = value(t)
        kvs[key] = v if t == V.ARRAY else (t.name, v)
    infos = []
    for _ in range(n_tensors):
        name = string()
        shape = read(f"{read('I')}Q")
        shape = shape if isinstance(shape, tuple) else (shape,)
        infos.append((name, shape, gguf.GGMLQuantizationType(read("I")), read("Q")))
    alignment = kvs.get("general.alignment", ("UINT32", gguf.GGUF_DEFAULT_ALIGNMENT))[1]
    start = -(-pos // alignment) * alignment
    tensors = []
    for name, shape, qtype, offset in infos:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(shape, dtype=np.int64)) // block * size
        tensors.append(Tensor(name, shape, qtype, data[start + offset:start + offset + n]))
    return GGUFFile(version, kvs, tensors, data)


def _show(value, limit: int = 80) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[:limit] + (f"... ({len(value)} items)" if isinstance(value, list) else "...")


def _kv_difference(key: str, ours, ref) -> str:
    (tk_o, v_o), (tk_r, v_r) = ours, ref
    if tk_o != tk_r:
        return f"{key}: {tk_o} {_show(v_o)}, reference {tk_r} {_show(v_r)}"
    if isinstance(v_o, list) and isinstance(v_r, list):
        if len(v_o) != len(v_r):
            return f"{key}: {len(v_o)} items, reference {len(v_r)}"
        bad = [i for i, (a, b) in enumerate(zip(v_o, v_r)) if a != b]
        i = bad[0]
        return f"{key}: {len(bad)} of {len(v_o)} items differ; first [{i}]: {v_o[i]!r}, reference {v_r[i]!r}"
    return f"{key}: {_show(v_o)}, reference {_show(v_r)}"


def _tensor_difference(a: Tensor, b: Tensor) -> str | None:
    """None when equal; else what differs: shape, type, bytes (with the largest value difference)."""
    problems = []
    if a.shape != b.shape:
        problems.append(f"shape {list(a.shape)}, reference {list(b.shape)}")
    if a.type != b.type:
        problems.append(f"type {a.type.name}, reference {b.type.name}")
    if not problems and np.array_equal(a.raw, b.raw):
        return None
    if np.prod(a.shape) == np.prod(b.shape):
        va, vb = a.values(), b.values()
        d = np.abs(va - vb)
        i = int(np.nanargmax(d)) if d.size else 0
        if d.size and d[i] > 0:
            problems.append(f"{int((d > 0).sum())} of {d.size} values differ, max |Δ| {d[i]:.3g} at flat index {i} "
                            f"({va[i]:.6g}, reference {vb[i]:.6g})")
        elif a.type == b.type:
            problems.append("bytes differ (same values)")
    return "; ".join(problems)


def compare(ours: Path, reference: Path) -> Comparison:
    a, b = read_gguf(ours), read_gguf(reference)
    c = Comparison()
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    for name in tb:
        if name not in ta:
            c.tensors.append(f"{name}: missing (reference: {tb[name].type.name} {list(tb[name].shape)})")
    for name in ta:
        if name not in tb:
            c.tensors.append(f"{name}: not in the reference (ours: {ta[name].type.name} {list(ta[name].shape)})")
        elif (d := _tensor_difference(ta[name], tb[name])) is not None:
            c.tensors.append(f"{name}: {d}")
    c.same_order = [t.name for t in a.tensors] == [t.name for t in b.tensors]
    if a.version != b.version:
        c.kvs.append(f"GGUF version: {a.version}, reference {b.version}")
    ka = {k: v for k, v in a.kvs.items() if not allowed_kv(k)}
    kb = {k: v for k, v in b.kvs.items() if not allowed_kv(k)}
    for k in kb:
        if k not in ka:
            c.kvs.append(f"{k}: missing (reference: {kb[k][0]} {_show(kb[k][1])})")
        elif ka[k] != kb[k] and not (k in UNORDERED_KV and ka[k][0] == kb[k][0]
                                     and sorted(ka[k][1]) == sorted(kb[k][1])):
            c.kvs.append(_kv_difference(k, ka[k], kb[k]))
    for k in ka:
        if k not in kb:
            c.kvs.append(f"{k}: not in the reference (ours: {ka[k][0]} {_show(ka[k][1])})")
    return c


# --- our side, and the table -----------------------------------------------------------------------------------
def convert_ours(model: Path, out: Path, outtype: str) -> tuple[Path | None, str | None]:
    """(GGUF, None), or (None, the error) when our converter fails."""
    from hf2gguf.convert import convert

    try:
        return convert(model, out, outtype, log=lambda m: None, threads=2), None
    except Exception as e:  # a ConversionError, or an unfinished architecture
        return None, f"our converter failed: {type(e).__name__}: {e}"


_OURS: dict[tuple[str, str], tuple[Path | None, str | None]] = {}


def our_gguf(variant: str, outtype: str, folder: Path) -> tuple[Path | None, str | None]:
    """Our converter's output for a fixture, made once per process (the reference and logits tests share it)."""
    if (variant, outtype) not in _OURS:
        model = ensure_models([variant], log=lambda m: None)[variant]
        _OURS[variant, outtype] = convert_ours(model, Path(folder) / f"{variant}-{outtype}.gguf", outtype)
    return _OURS[variant, outtype]


def selected_variants(session, default=()) -> list[str]:
    """The variants the collected tests use (their "variant" parameter), so that `-k llama2` builds one."""
    names = {item.callspec.params["variant"] for item in session.items
             if hasattr(item, "callspec") and "variant" in item.callspec.params}
    return [n for n in VARIANTS if n in names or n in default]


def compare_pair(ours: tuple[Path | None, str | None], ref: ReferenceOutput) -> Comparison:
    if ref.path is None:
        tail = ref.log.read_text(errors="replace").strip().splitlines()[-3:] if ref.log.exists() else []
        return Comparison(error="the reference converter failed: " + " | ".join(tail))
    if ours[0] is None:
        return Comparison(error=ours[1])
    return compare(ours[0], ref.path)


def table(results: dict[tuple[str, str], Comparison]) -> str:
    lines = ["| variant | outtype | tensors | KVs | differing keys | tensor order |", "|---|---|---|---|---|---|"]
    for (variant, outtype), c in results.items():
        if c.error:
            error = " ".join(c.error.split())[:120].replace("|", "/")
            lines.append(f"| {variant} | {outtype} | - | - | {error} | - |")
            continue
        tensors = "equal" if not c.tensors else f"{len(c.tensors)} differ"
        kvs = "equal" if not c.kvs else f"{len(c.kvs)} differ"
        lines.append(f"| {variant} | {outtype} | {tensors} | {kvs} | {', '.join(c.differing_keys())} | "
                     f"{'same' if c.same_order else 'differs'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="compare and print the table")
    ap.add_argument("--details", action="store_true", help="also print every difference")
    ap.add_argument("--drive", help=argparse.SUPPRESS)
    ap.add_argument("variants", nargs="*")
    a = ap.parse_args()
    if a.drive:
        _drive(a.drive)
        return
    names = a.variants or [n for n, v in VARIANTS.items() if v.reference]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    refs = ensure_reference(names, log=log)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            for t in OUTTYPES:
                ours = our_gguf(n, t, Path(tmp))
                results[n, t] = compare_pair(ours, refs[n, t])
                if ours[0] is not None:
                    ours[0].unlink()  # a few files at a time
    print(table(results))
    if a.details:
        for (n, t), c in results.items():
            if not c.equal:
                print(f"\n### {n} {t}\n{c.report()}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Make one pair's GGUF from the model's converted GGUF, atomically.

    python scripts/quantize.py IN.gguf OUT.gguf TYPE --threads N --llama-quantize PATH [options]
    python scripts/quantize.py IN.gguf OUT_DIR TYPE ... --gguf-split PATH --split-max-size 2G

With --llama-quantize, runs `llama-quantize IN TMP TYPE N` and renames TMP to OUT on success (a failed
llama-quantize leaves a partial file, which must never look done). IN must then be full precision (F32, F16,
BF16): quantizing an already quantized model again (llama-quantize's --allow-requantize) is refused.
Without --llama-quantize, IN already has the wanted type: OUT becomes a copy of it, made in the kernel with
copy_file_range, which file systems with shared extents (Btrfs, XFS with reflink) turn into a clone that
takes no time and no space until one side changes. (Not a hard link: Snakemake touches an output no newer than
its input, and through a shared inode that would make the input look updated.)

With --gguf-split and --split-max-size N(M|G) or --split-max-tensors N, OUT is a folder of shards that
llama.cpp loads from the first one: OUT/NAME-00001-of-0000M.gguf ... (NAME is OUT's name), written by
llama-gguf-split into a temporary folder that becomes OUT when complete.

--extra passes one more llama-quantize option, "--flag=VALUE", from the allow-list EXTRA_OPTIONS below.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from hf2gguf.atomic import atomic_folder, atomic_path
from llama_toolchain import installed_build

FULL_PRECISION = ("F32", "F16", "BF16")
SPLIT_SIZE = r"[1-9][0-9]{0,8}[MG]"  # llama-gguf-split --split-max-size: whole megabytes (10^6) or gigabytes

# llama-quantize options (tools/quantize/quantize.cpp, b11312) that a pair may add with EXTRA_QUANTIZE_ARGS:
# the pattern their value must match, its syntax and an example.
KV_OVERRIDE = r"(?P<key>[A-Za-z_][A-Za-z0-9_.-]{0,126})=(?P<type>int|float|bool|str):(?P<value>.*)"
KV_VALUES = {"int": r"[+-]?[0-9]{1,18}", "float": r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?",
             "bool": r"true|false", "str": r"[^\x00-\x1f\x7f]{0,127}"}
EXTRA_OPTIONS = {
    "--prune-layers": (r"[0-9]{1,6}(,[0-9]{1,6})*", "--prune-layers=L0,L1,...", "--prune-layers=10,11"),
    "--override-kv": (KV_OVERRIDE, "--override-kv=KEY=TYPE:VALUE (TYPE int, float, bool or str; a str has at "
                                   "most 127 characters)", "--override-kv=general.license=str:mit"),
    "--include-weights": (r"[A-Za-z0-9_.]+", "--include-weights=NAME", "--include-weights=attn_v"),
    "--exclude-weights": (r"[A-Za-z0-9_.]+", "--exclude-weights=NAME", "--exclude-weights=ffn_down"),
    "--max-buffer-size": (r"[1-9][0-9]{0,6}", "--max-buffer-size=MiB", "--max-buffer-size=1024"),
}
# The other llama-quantize options, and why a pair cannot pass them.
REFUSED_OPTIONS = {
    "--allow-requantize": "the workflow quantizes only from the model's full-precision intermediate; "
                          "requantizing an already quantized model compounds the loss. Remove it",
    "--imatrix": "the workflow computes the importance matrix itself: set IMATRIX: true instead",
    "--output-tensor-type": "use the field OUTPUT_TENSOR_TYPE instead",
    "--token-embedding-type": "use the field TOKEN_EMBEDDING_TYPE instead",
    "--tensor-type": "use the field TENSOR_TYPES instead",
    "--tensor-type-file": "list the overrides in the field TENSOR_TYPES instead (a file outside the "
                          "workflow would not be tracked)",
    "--leave-output-tensor": "use LEAVE_OUTPUT_TENSOR: true instead",
    "--pure": "use PURE: true instead",
    "--keep-split": "the intermediate is one file, so there are no shards to keep; set SPLIT_MAX_SIZE to "
                    "split the output instead",
    "--dry-run": "it writes no GGUF. Remove it",
}
WORKFLOW_KEYS = ("hf2gguf.", "split.")  # written by quantize.py and llama-gguf-split


def extra_arguments(items: list[str]) -> list[tuple[str, str]]:
    """EXTRA_QUANTIZE_ARGS items ("--flag=VALUE" or "--flag VALUE") as (flag, value) pairs, every one checked
    against EXTRA_OPTIONS; anything else raises ValueError saying why and what to do instead."""
    allowed = ", ".join(example for _, _, example in EXTRA_OPTIONS.values())
    pairs = []
    for item in items:
        m = re.fullmatch(r"(--[A-Za-z][A-Za-z0-9-]*)(?:[= ](.*))?", str(item).strip(), re.S)
        flag, value = (m.group(1), m.group(2)) if m else (str(item), None)
        if flag in REFUSED_OPTIONS:
            raise ValueError(f"{item!r} is refused: {REFUSED_OPTIONS[flag]}")
        if flag not in EXTRA_OPTIONS:
            raise ValueError(f"{item!r} is not a llama-quantize option the workflow passes on. Allowed, one "
                             f"per list item: {allowed}")
        pattern, syntax, example = EXTRA_OPTIONS[flag]
        m = re.fullmatch(pattern, value or "", re.S)
        if m and flag == "--override-kv" and not re.fullmatch(KV_VALUES[m["type"]], m["value"]):
            m = None
        if not m:
            raise ValueError(f"{item!r}: write {syntax}, e.g. {example}")
        if flag == "--override-kv" and m["key"].startswith(WORKFLOW_KEYS):
            raise ValueError(f"{item!r}: the workflow writes the {m['key'].split('.')[0]}.* keys itself. Remove it")
        pairs.append((flag, value))
    flags = {flag for flag, _ in pairs}
    if {"--include-weights", "--exclude-weights"} <= flags:
        raise ValueError("--include-weights and --exclude-weights cannot be used together (llama-quantize "
                         "refuses it). Keep one of them")
    return pairs


# Block types a release stores and the intermediate keeps as they are (gpt-oss's MXFP4 experts, which llama.cpp's
# converter never dequantizes either): llama-quantize is told to keep them, and quantizes everything else
KEPT_AS_RELEASED = {"MXFP4": re.compile(r"blk\.\d+\.ffn_(gate|up|down)_exps\.weight")}


def tensor_types(path: Path) -> dict[str, list[str]]:
    """{type name: the tensors of that type} of a GGUF."""
    from hf2gguf.gguf_header import read_header

    types: dict[str, list[str]] = {}
    for t in read_header(path)[1]:
        types.setdefault(t.type_name, []).append(t.name)
    return types


def check_not_quantized(src: Path) -> list[str]:
    """Refuses an input that is already quantized: llama-quantize would need --allow-requantize. The exception
    is a release's own block type (KEPT_AS_RELEASED): the llama-quantize options that keep those tensors as they
    are come back. A file that gguf cannot read (not a GGUF, or a type newer than the gguf package) is left to
    llama-quantize, which says what is wrong with it and refuses to requantize too."""
    try:
        types = tensor_types(src)
    except (ValueError, KeyError, IndexError, OSError) as e:
        print(f"note: could not list the tensor types of {src} ({e}); llama-quantize checks it", file=sys.stderr)
        return []
    keep = []
    for qtype, names in list(types.items()):
        pattern = KEPT_AS_RELEASED.get(qtype)
        if pattern and all(pattern.fullmatch(n) for n in names):
            print(f"note: keeping the release's {qtype} tensors as they are ({len(names)}, e.g. {names[0]})",
                  file=sys.stderr)
            kinds = sorted({n.split(".")[2] for n in names})
            keep += [a for k in kinds for a in ("--tensor-type", f"{k}={qtype.lower()}")]
            del types[qtype]
    quantized = {k: v for k, v in types.items() if k not in FULL_PRECISION}
    if quantized:
        found = ", ".join(f"{names[0]} is {qtype}" for qtype, names in sorted(quantized.items()))
        raise SystemExit(
            f"error: {src} is already quantized ({found}). The workflow quantizes only from a full-precision "
            f"({', '.join(FULL_PRECISION)}) intermediate, never requantizes (llama-quantize --allow-requantize "
            f"compounds the loss). Delete {src} and the workflow converts it again from the model folder.")
    return keep


def run_llama_quantize(cmd: list[str]) -> tuple[int, list[str]]:
    """Runs llama-quantize, passing its output through, and returns its exit code and fallback warnings."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    fallbacks = []
    for line in proc.stdout:
        sys.stderr.write(line)
        if "falling back to" in line:
            fallbacks.append(" ".join(line.replace("warning:", "").split()))
    return proc.wait(), fallbacks


def llama_quantize(tool: str, src: Path, dest: Path, qtype: str, threads: int, options: list[str],
                   out: Path) -> None:
    """Writes dest (not atomically: the callers rename it) with llama-quantize; out is named in errors."""
    options = [*check_not_quantized(src), *options]
    build = installed_build(tool)
    kv = [f"hf2gguf.precision=str:{qtype}"]
    if build:
        kv.append(f"hf2gguf.llama_cpp=str:{'-'.join(build)}")
    cmd = [tool, *(a for k in kv for a in ("--override-kv", k)), *options, str(src), str(dest), qtype,
           str(threads)]
    print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
    returncode, fallbacks = run_llama_quantize(cmd)
    if fallbacks:
        print(f"note: {len(fallbacks)} tensor(s) have rows that do not fit {qtype}'s blocks; llama-quantize "
              "wrote them in a fallback type:\n  " + "\n  ".join(fallbacks), file=sys.stderr)
    if returncode != 0:
        free = shutil.disk_usage(out.parent).free
        hint = ""
        if free < src.stat().st_size:  # a quantized file is smaller than its input
            hint = f" The disk holding {out.parent} may be full: {free // 2**20} MiB free."
        raise SystemExit(f"error: llama-quantize failed (exit code {returncode}) making {out} from "
                         f"{src}; its messages are above.{hint}")


def copy_file(src: Path, dest: Path) -> None:
    """src's bytes into dest with copy_file_range: a clone where the file system shares extents, else an in-kernel
    copy; shutil.copyfile (sendfile, Python 3.11) where the kernel refuses it (another file system, before 5.3)."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        left = os.fstat(fin.fileno()).st_size
        try:
            while left > 0:
                done = os.copy_file_range(fin.fileno(), fout.fileno(), min(left, 2**30))
                if done == 0:
                    break
                left -= done
        except OSError:  # EXDEV, ENOSYS, EOPNOTSUPP, EINVAL
            left = -1
    if left != 0:
        shutil.copyfile(src, dest)


def quantize(src: Path, out: Path, qtype: str, threads: int = 1, tool: str | None = None,
             options: list[str] = (), split: list[str] = (), gguf_split: str | None = None) -> None:
    if not split:
        with atomic_path(out) as tmp:
            if tool:
                llama_quantize(tool, src, tmp, qtype, threads, options, out)
            else:
                print(f"{src} is already {qtype}: copying it to {out}", file=sys.stderr, flush=True)
                copy_file(src, tmp)
        return
    with atomic_folder(out) as folder:
        whole = src  # a direct precision is split from the intermediate itself
        if tool:
            whole = folder / f".{out.name}.whole.gguf"
            llama_quantize(tool, src, whole, qtype, threads, options, out)
        cmd = [gguf_split, "--split", *split, str(whole), str(folder / out.name)]
        print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
        returncode = subprocess.run(cmd, stdout=sys.stderr).returncode
        if returncode != 0:
            raise SystemExit(f"error: llama-gguf-split failed (exit code {returncode}) splitting {whole} into "
                             f"{out}; its messages are above")
        if whole != src:
            whole.unlink()
        shards = sorted(p.name for p in folder.iterdir())
        print(f"{out}: {len(shards)} shard(s), llama.cpp loads them from {out / shards[0]}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path, help="the GGUF; with --gguf-split, the folder of its shards")
    p.add_argument("type", help="llama-quantize type name, e.g. Q4_K_M")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--llama-quantize", dest="tool", default="", help="the llama-quantize binary; empty = copy")
    p.add_argument("--imatrix", help="an importance matrix (llama-imatrix's output)")
    p.add_argument("--output-tensor-type", help="type of the output tensor")
    p.add_argument("--token-embedding-type", help="type of the token embedding")
    p.add_argument("--tensor-type", action="append", default=[], help="NAME_PATTERN=TYPE (repeatable)")
    p.add_argument("--leave-output-tensor", action="store_true", help="keep the output tensor unquantized")
    p.add_argument("--pure", action="store_true", help="no k-quant mixtures")
    p.add_argument("--extra", action="append", default=[], metavar="--FLAG=VALUE",
                   help="one more llama-quantize option from the allow-list (repeatable): "
                        + ", ".join(EXTRA_OPTIONS))
    p.add_argument("--gguf-split", help="the llama-gguf-split binary: OUTPUT becomes a folder of shards")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--split-max-size", metavar="N(M|G)", help="largest shard, e.g. 500M or 2G")
    size.add_argument("--split-max-tensors", type=int, metavar="N", help="most tensors in a shard")
    a = p.parse_args(argv)
    options = []
    for name in ("imatrix", "output_tensor_type", "token_embedding_type"):
        if getattr(a, name):
            options += ["--" + name.replace("_", "-"), getattr(a, name)]
    for override in a.tensor_type:
        options += ["--tensor-type", override]
    options += ["--leave-output-tensor"] * a.leave_output_tensor + ["--pure"] * a.pure
    try:
        options += [arg for pair in extra_arguments(a.extra) for arg in pair]
    except ValueError as e:
        p.error(str(e))
    if options and not a.tool:
        p.error("llama-quantize options need --llama-quantize")
    split = []
    if a.split_max_size:
        if not re.fullmatch(SPLIT_SIZE, a.split_max_size):
            p.error(f"--split-max-size {a.split_max_size}: a whole number of megabytes or gigabytes, e.g. 500M or 2G")
        split = ["--split-max-size", a.split_max_size]
    elif a.split_max_tensors is not None:
        if a.split_max_tensors < 1:
            p.error("--split-max-tensors must be at least 1")
        split = ["--split-max-tensors", str(a.split_max_tensors)]
    if bool(split) != bool(a.gguf_split):
        p.error("--gguf-split and --split-max-size (or --split-max-tensors) go together")
    quantize(a.input, a.output, a.type, a.threads, a.tool or None, options, split, a.gguf_split)
    return 0


if __name__ == "__main__":
    sys.exit(main())

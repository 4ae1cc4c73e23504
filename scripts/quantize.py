#!/usr/bin/env python3
"""Make one pair's GGUF from the model's converted GGUF, atomically.

    python scripts/quantize.py IN.gguf OUT.gguf TYPE --threads N --llama-quantize PATH

With --llama-quantize, runs `llama-quantize IN TMP TYPE N` and renames TMP to OUT on success (a failed
llama-quantize leaves a partial file, which must never look done). Without it, IN already has the wanted
type: OUT becomes a copy of it. (Not a hard link: Snakemake touches an output no newer than its input,
and through a shared inode that would make the input look updated.)
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from hf2gguf.atomic import atomic_path
from llama_toolchain import installed_build


def run_llama_quantize(cmd: list[str]) -> tuple[int, list[str]]:
    """Runs llama-quantize, passing its output through, and returns its exit code and fallback warnings."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    fallbacks = []
    for line in proc.stdout:
        sys.stderr.write(line)
        if "falling back to" in line:
            fallbacks.append(" ".join(line.replace("warning:", "").split()))
    return proc.wait(), fallbacks


def quantize(src: Path, out: Path, qtype: str, threads: int = 1, tool: str | None = None,
             options: list[str] = ()) -> None:
    with atomic_path(out) as tmp:
        if tool:
            build = installed_build(tool)
            kv = [f"hf2gguf.precision=str:{qtype}"]
            if build:
                kv.append(f"hf2gguf.llama_cpp=str:{'-'.join(build)}")
            cmd = [tool, *(a for k in kv for a in ("--override-kv", k)), *options, str(src), str(tmp), qtype,
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
        else:
            print(f"{src} is already {qtype}: copying it to {out}", file=sys.stderr, flush=True)
            shutil.copyfile(src, tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("type", help="llama-quantize type name, e.g. Q4_K_M")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--llama-quantize", dest="tool", default="", help="the llama-quantize binary; empty = copy")
    p.add_argument("--imatrix", help="an importance matrix (llama-imatrix's output)")
    p.add_argument("--output-tensor-type", help="type of the output tensor")
    p.add_argument("--token-embedding-type", help="type of the token embedding")
    p.add_argument("--tensor-type", action="append", default=[], help="NAME_PATTERN=TYPE (repeatable)")
    p.add_argument("--leave-output-tensor", action="store_true", help="keep the output tensor unquantized")
    p.add_argument("--pure", action="store_true", help="no k-quant mixtures")
    a = p.parse_args(argv)
    options = []
    for name in ("imatrix", "output_tensor_type", "token_embedding_type"):
        if getattr(a, name):
            options += ["--" + name.replace("_", "-"), getattr(a, name)]
    for override in a.tensor_type:
        options += ["--tensor-type", override]
    options += ["--leave-output-tensor"] * a.leave_output_tensor + ["--pure"] * a.pure
    if options and not a.tool:
        p.error("llama-quantize options need --llama-quantize")
    quantize(a.input, a.output, a.type, a.threads, a.tool or None, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())

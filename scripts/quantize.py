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


def quantize(src: Path, out: Path, qtype: str, threads: int = 1, tool: str | None = None) -> None:
    with atomic_path(out) as tmp:
        if tool:
            cmd = [tool, str(src), str(tmp), qtype, str(threads)]
            print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
            res = subprocess.run(cmd)
            if res.returncode != 0:
                raise SystemExit(f"error: llama-quantize failed (exit code {res.returncode}) making {out} from "
                                 f"{src}; its messages are above")
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
    a = p.parse_args(argv)
    quantize(a.input, a.output, a.type, a.threads, a.tool or None)
    return 0


if __name__ == "__main__":
    if "snakemake" in globals():  # run by the quantize rule's script: directive
        from pipeline import run_logged

        sm = snakemake  # noqa: F821
        run_logged(sm.log[0], quantize, Path(sm.input.gguf), Path(sm.output[0]), sm.params.type, sm.threads,
                   sm.input.get("tool"))
    else:
        sys.exit(main())

#!/usr/bin/env python3
"""Check one GGUF in llama.cpp and measure what its precision cost, into a JSON report.

    python scripts/validate.py OUT.gguf --kld-base MODEL.kld --perplexity llama-perplexity -o OUT.json

Runs `llama-perplexity --kl-divergence` against the logits that `--kl-divergence-base` saved for the model's
full-precision intermediate on the evaluation text, and records: file size, bits per weight, tensors by type,
whether llama.cpp loaded it, perplexity, mean KL divergence and top-1 agreement with the intermediate, wall
time and the llama.cpp build.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pipeline import validation_summary

PATTERNS = {
    "perplexity": r"Mean PPL\(Q\)\s*:\s*([0-9.]+)",
    "kl_divergence": r"Mean\s+KLD:\s*([0-9.eE+-]+)",
    "top1_agreement": r"Same top p:\s*([0-9.]+)",
}


def gguf_facts(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    params = sum(int(t.n_elements) for t in reader.tensors)
    data_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    return {"file_bytes": path.stat().st_size, "parameters": params, "bits_per_weight": round(8 * data_bytes / params, 4),
            "tensors_by_type": dict(sorted(types.items()))}


def llama_cpp_build(tool: str) -> str | None:
    """From the toolchain's build-info.json beside bin/; None for a binary from elsewhere."""
    info = Path(tool).resolve().parent.parent / "build-info.json"
    try:
        data = json.loads(info.read_text())
        return f"{data['llama_build']} ({data['commit']})"
    except (OSError, ValueError, KeyError):
        return None


def validate(gguf_path: Path, kld_base: Path, perplexity: str, ctx: int, threads: int = 1) -> dict:
    report = {"gguf": str(gguf_path), **gguf_facts(gguf_path)}
    # -c and -b as for the base: with a larger batch, b11312 stops before its summary on short texts
    cmd = [perplexity, "-m", str(gguf_path), "--kl-divergence-base", str(kld_base), "--kl-divergence",
           "-c", str(ctx), "-b", str(ctx), "-t", str(threads)]
    print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
    for attempt in range(1, 4):
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        report["wall_seconds"] = round(time.monotonic() - start, 3)
        out = proc.stdout + proc.stderr
        sys.stderr.write(out)
        if proc.returncode != 0 or all(re.search(p, out) for p in PATTERNS.values()):
            break
        # b11312's logger thread can lose the last lines at exit, more often on a busy machine
        print(f"\nllama-perplexity exited 0 without its summary (attempt {attempt} of 3)", file=sys.stderr)
    report["llama_cpp_build"] = llama_cpp_build(perplexity)
    values = {k: re.search(p, out) for k, p in PATTERNS.items()}
    report["loaded"] = proc.returncode == 0 and all(values.values())
    if not report["loaded"]:
        raise SystemExit(f"error: llama.cpp could not evaluate {gguf_path} (exit code {proc.returncode}); its "
                         "messages are above")
    report |= {k: float(m.group(1)) for k, m in values.items()}
    report["top1_agreement"] = round(report["top1_agreement"] / 100, 5)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--kld-base", type=Path, required=True)
    ap.add_argument("--perplexity", required=True, help="the llama-perplexity binary")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--ctx", type=int, default=128, help="context size the base was computed with")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    report = validate(a.gguf, a.kld_base, a.perplexity, a.ctx, a.threads)
    tmp = a.output.with_name(f".{a.output.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, a.output)
    print(validation_summary(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

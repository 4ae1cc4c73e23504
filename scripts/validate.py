#!/usr/bin/env python3
"""Check one GGUF in llama.cpp and measure what its precision cost, into a JSON report.

    python scripts/validate.py OUT.gguf --kld-base MODEL.kld --text TEXT --perplexity llama-perplexity -o OUT.json

Has llama.cpp's `llama-perplexity --kl-divergence-base` compute the output's log-probabilities on the evaluation
text, compares them with those it saved for the model's full-precision intermediate, and records: file size, bits per weight, tensors by type,
whether llama.cpp loaded it, perplexity, mean KL divergence and top-1 agreement with the intermediate, wall
time and the llama.cpp build.
"""

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

from hf2gguf.atomic import write_json
from llama_toolchain import installed_build
from pipeline import converter_of_gguf, gguf_files, validation_summary

MAGIC = b"_logits_"
NEG_CUTOFF = -16.0  # llama.cpp ignores base probabilities below exp(-16) in its KL sum; so do we


def read_log_probs(path: Path):
    """A `llama-perplexity --kl-divergence-base` file: (tokens, per-chunk rows of log-probabilities).

    Layout (tools/perplexity, b11312): "_logits_", n_ctx, n_vocab, n_chunk (int32), the tokens (int32,
    n_chunk * n_ctx), then for each chunk the last n_ctx - 1 - n_ctx/2 positions, each as two floats (scale,
    min) and n_vocab (padded to even) uint16 q with log p = scale * q + min."""
    import numpy as np

    raw = np.fromfile(path, dtype=np.uint8)
    if raw[:8].tobytes() != MAGIC:
        raise SystemExit(f"error: {path} is not a llama-perplexity logits file")
    n_ctx, n_vocab, n_chunk = (int(x) for x in raw[8:20].view(np.int32))
    tokens = raw[20:20 + 4 * n_ctx * n_chunk].view(np.int32).reshape(n_chunk, n_ctx)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    first = n_ctx // 2
    rows = n_ctx - 1 - first
    body = raw[20 + 4 * n_ctx * n_chunk:]
    if body.size != n_chunk * rows * nv * 2:
        raise SystemExit(f"error: {path} is incomplete ({body.size} of {n_chunk * rows * nv * 2} bytes)")
    data = body.view(np.uint16).reshape(n_chunk, rows, nv)
    scale = data[:, :, 0:2].copy().view(np.float32)[..., 0]
    low = data[:, :, 2:4].copy().view(np.float32)[..., 0]
    log_p = data[:, :, 4:4 + n_vocab].astype(np.float32) * scale[..., None] + low[..., None]
    targets = tokens[:, first + 1:first + 1 + rows]
    return tokens, log_p, targets


def compare(base_path: Path, quant_path: Path) -> dict:
    """KL divergence, top-1 agreement and perplexity of the output against the intermediate."""
    import numpy as np

    base_tokens, base, targets = read_log_probs(base_path)
    tokens, quant, _ = read_log_probs(quant_path)
    if base.shape != quant.shape or not np.array_equal(base_tokens, tokens):
        raise SystemExit(f"error: {quant_path} and {base_path} cover different tokens or vocabularies")
    p = np.where(base > NEG_CUTOFF, np.exp(base), 0.0)
    kld = (p * (base - quant)).sum(-1)
    nll = -np.take_along_axis(quant, targets[..., None], -1)[..., 0]
    return {"kl_divergence": round(float(kld.mean()), 6),
            "top1_agreement": round(float((base.argmax(-1) == quant.argmax(-1)).mean()), 5),
            "perplexity": round(float(np.exp(nll.mean())), 4),
            "evaluated_tokens": int(kld.size)}


def gguf_facts(path: Path) -> dict:
    """Sizes and types of one GGUF, or of all the shards of a split one."""
    from hf2gguf.gguf_header import read_header

    files = gguf_files(path)
    headers = [read_header(f) for f in files]
    tensors = [t for _, infos in headers for t in infos]
    params = sum(t.n_elements for t in tensors)
    data_bytes = sum(t.n_bytes for t in tensors)
    types = collections.Counter(t.type_name for t in tensors)
    provenance = {k: v for k, v in headers[0][0].items() if k.startswith("hf2gguf.")}
    return {"file_bytes": sum(f.stat().st_size for f in files), "files": len(files), "parameters": params,
            "bits_per_weight": round(8 * data_bytes / params, 4),
            "tensors_by_type": dict(sorted(types.items())), "converter": converter_of_gguf(provenance)}


def validate(gguf_path: Path, kld_base: Path, perplexity: str, text: Path, ctx: int, threads: int = 1) -> dict:
    """llama.cpp computes the output's log-probabilities on the evaluation text (the same call that made the
    intermediate's base); the comparison is done here, from the two files. (b11312's llama-perplexity can exit
    before its logger has printed its own summary, so that text is not relied on.)"""
    report = {"gguf": str(gguf_path), **gguf_facts(gguf_path)}
    logits = gguf_path.with_name(f".{gguf_path.name}.logits-{os.getpid()}")
    model = gguf_files(gguf_path)[0]  # llama.cpp finds the other shards of a split model from the first
    cmd = [perplexity, "-m", str(model), "-f", str(text), "-c", str(ctx), "-b", str(ctx), "-t", str(threads),
           "--kl-divergence-base", str(logits)]
    print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        start = time.monotonic()
        proc = subprocess.run(cmd, stderr=subprocess.STDOUT, stdout=sys.stderr)
        report["wall_seconds"] = round(time.monotonic() - start, 3)
        report["loaded"] = proc.returncode == 0 and logits.exists()
        if not report["loaded"]:
            raise SystemExit(f"error: llama.cpp could not load or run {gguf_path} (exit code {proc.returncode}); "
                             "its messages are above")
        report |= compare(kld_base, logits)
    finally:
        logits.unlink(missing_ok=True)
    build = installed_build(perplexity)
    report["llama_cpp_build"] = f"{build[0]} ({build[1]})" if build else None
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--kld-base", type=Path, required=True)
    ap.add_argument("--perplexity", required=True, help="the llama-perplexity binary")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True, help="the evaluation text the base was computed on")
    ap.add_argument("--ctx", type=int, default=128, help="context size the base was computed with")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        report = validate(a.gguf, a.kld_base, a.perplexity, a.text, a.ctx, a.threads)
    except ValueError as e:  # an incomplete folder of shards (pipeline.gguf_files says which and what to do)
        raise SystemExit(f"error: {e}") from None
    write_json(a.output, report)
    print(validation_summary(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

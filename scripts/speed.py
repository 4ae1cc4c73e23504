#!/usr/bin/env python3
"""Measure one GGUF's speed with llama.cpp's llama-bench, into a JSON file beside its validation report.

    python scripts/speed.py OUT.gguf --llama-bench llama-bench --prompt 64 --gen 16 --repetitions 3 \
        --gpu-layers 0 --threads 2 -o OUT.speed.json

Runs `llama-bench -o json` once: a prompt-processing test (n_prompt tokens in one batch) and a generation test
(n_gen tokens one at a time), each repeated; records their mean and standard deviation in tokens per second,
with the settings and what llama-bench reports of the build, backend and devices it ran on.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from hf2gguf.atomic import write_json
from pipeline import gguf_files, speed_summary

# what llama-bench reports of where it ran, copied into the report as it is
MACHINE_KEYS = ("backends", "cpu_info", "gpu_info", "devices", "model_type", "model_size", "model_n_params",
                "n_batch", "n_ubatch", "type_k", "type_v", "flash_attn")


def bench_command(tool: str, model: str, prompt: int, gen: int, repetitions: int, threads: int,
                  gpu_layers: int) -> list[str]:
    return [tool, "-m", model, "-p", str(prompt), "-n", str(gen), "-r", str(repetitions), "-t", str(threads),
            "-ngl", str(gpu_layers), "-o", "json"]


def summarize(results: list[dict]) -> dict:
    """The figures of `llama-bench -o json`'s output (a list of tests): the prompt-processing test (n_prompt > 0,
    n_gen = 0) and the generation test (n_gen > 0, n_prompt = 0)."""
    if not isinstance(results, list):
        raise ValueError("llama-bench's JSON is not a list of tests")
    pp = [t for t in results if t.get("n_prompt", 0) > 0 and t.get("n_gen", 0) == 0]
    tg = [t for t in results if t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0]
    if len(pp) != 1 or len(tg) != 1:
        raise ValueError(f"expected one prompt and one generation test in llama-bench's output, got "
                         f"{len(pp)} and {len(tg)} of {len(results)}")
    pp, tg = pp[0], tg[0]
    report = {
        "prompt_tps": round(float(pp["avg_ts"]), 3), "prompt_tps_sd": round(float(pp["stddev_ts"]), 3),
        "generation_tps": round(float(tg["avg_ts"]), 3), "generation_tps_sd": round(float(tg["stddev_ts"]), 3),
        "n_prompt": int(pp["n_prompt"]), "n_gen": int(tg["n_gen"]), "repetitions": len(pp["samples_ts"]),
        "threads": int(pp["n_threads"]), "n_gpu_layers": int(pp["n_gpu_layers"]),
        "llama_cpp_build": f"b{pp['build_number']} ({pp['build_commit']})",
        "prompt_samples_tps": pp["samples_ts"], "generation_samples_tps": tg["samples_ts"],
    }
    return report | {k: pp[k] for k in MACHINE_KEYS if k in pp}


def bench(gguf_path: Path, tool: str, prompt: int, gen: int, repetitions: int, threads: int,
          gpu_layers: int) -> dict:
    model = gguf_files(gguf_path)[0]  # llama.cpp finds the other shards of a split model from the first
    cmd = bench_command(tool, str(model), prompt, gen, repetitions, threads, gpu_layers)
    print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    wall = round(time.monotonic() - start, 3)
    if proc.returncode != 0:
        raise SystemExit(f"error: llama-bench could not run {gguf_path} (exit code {proc.returncode}); "
                         "its messages are above")
    try:
        figures = summarize(json.loads(proc.stdout))
    except ValueError as e:
        raise SystemExit(f"error: {e}:\n{proc.stdout[-2000:]}") from None
    return {"gguf": str(gguf_path), **figures, "wall_seconds": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--llama-bench", required=True, help="the llama-bench binary")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (llama-bench -p)")
    ap.add_argument("--gen", type=int, default=16, help="generated tokens (llama-bench -n)")
    ap.add_argument("--repetitions", type=int, default=3, help="repetitions of each test (llama-bench -r)")
    ap.add_argument("--gpu-layers", type=int, default=0, help="layers offloaded to the GPU (llama-bench -ngl)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        report = bench(a.gguf, a.llama_bench, a.prompt, a.gen, a.repetitions, a.threads, a.gpu_layers)
    except ValueError as e:  # an incomplete folder of shards (pipeline.gguf_files says which and what to do)
        raise SystemExit(f"error: {e}") from None
    write_json(a.output, report)
    print(f"{report['gguf']}: {speed_summary(report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

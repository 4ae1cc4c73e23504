"""What the rules decide about their jobs, as plain functions: what a pair's output is made from, what a
conversion asks of the cluster, and the digest of the code a job runs. rules/*.smk turn these decisions into
paths and settings; tests/test_jobs.py tests them.

Imported at parse time like pipeline.py: standard library only, and no work beyond a few stat calls.
"""
from __future__ import annotations

import hashlib
import os
import shlex
from typing import NamedTuple

import pipeline


class Source(NamedTuple):
    """How a pair's output is made: `copy_of` the converter's output at that type, or (None) quantized by
    llama-quantize from the model's intermediate, with an importance matrix when `imatrix`."""

    copy_of: str | None
    imatrix: bool


def output_source(pair_cfg: dict, precision: str, where: str = "the target") -> Source:
    """The precisions our converter writes (F32, F16, BF16, Q8_0) are its output, copied, unless the pair sets a
    llama-quantize option or an importance matrix for them; every other precision is quantized."""
    options, imatrix = pipeline.quantize_options(pair_cfg, precision, where)
    precision = pipeline.canonical_precision(precision)
    if precision in pipeline.DIRECT_PRECISIONS and not options and not imatrix:
        return Source(precision, False)
    return Source(None, imatrix)


def quantize_arguments(pair_cfg: dict, precision: str, split: bool = False) -> str:
    """The pair's llama-quantize options as arguments of scripts/quantize.py; for its split output, then
    --split-max-size or --split-max-tensors. A param of the quantize rules, so that changing one reruns the job."""
    options, _ = pipeline.quantize_options(pair_cfg, precision)
    if split:
        options += pipeline.split_arguments(pair_cfg)
    return " ".join(shlex.quote(o) for o in options)


TOOL_FLAGS = {"tool": "--llama-quantize", "imatrix": "--imatrix", "gguf_split": "--gguf-split"}


def tool_arguments(inputs) -> str:
    """scripts/quantize.py's --llama-quantize, --imatrix and --gguf-split, for the tools among a job's inputs."""
    names = inputs.keys()
    return " ".join(f"{flag} {shlex.quote(inputs[name])}" for name, flag in TOOL_FLAGS.items() if name in names)


def pair_resource(pair_cfg: dict, field: str, env: str | None = None) -> str | None:
    """A resource of the jobs that run on the pair's hardware: the pair's YAML field, else the environment
    variable `env`, else None, which leaves the resource unset (the cluster's default)."""
    return pair_cfg.get(field) or os.environ.get(env or "", "") or None


# llama-bench's sizes when the pair sets none (rules/schemas/pair.schema.yaml has the same defaults): small, so
# that the bundled tiny model adds seconds to a run; GPU pairs offload every layer unless GPU_LAYERS says otherwise.
BENCH_DEFAULTS = {"BENCH_PROMPT": 64, "BENCH_GEN": 16, "BENCH_REPETITIONS": 3}
ALL_LAYERS = 99


def bench_settings(pair_cfg: dict) -> dict:
    """The pair's benchmark settings: prompt and generated tokens, repetitions, and layers offloaded to the GPU
    (GPU_LAYERS; unset = all of them when the pair asks for GPUs, else none)."""
    settings = {k: pair_cfg.get(k) or v for k, v in BENCH_DEFAULTS.items()}
    layers = pair_cfg.get("GPU_LAYERS")
    settings["GPU_LAYERS"] = layers if layers is not None else (ALL_LAYERS if pair_cfg.get("GPUS") else 0)
    return settings


def bench_arguments(pair_cfg: dict) -> str:
    """scripts/speed.py's options for the pair: a param of rule speed, so that changing one reruns exactly the
    benchmarks of that pair."""
    s = bench_settings(pair_cfg)
    return (f"--prompt {s['BENCH_PROMPT']} --gen {s['BENCH_GEN']} --repetitions {s['BENCH_REPETITIONS']} "
            f"--gpu-layers {s['GPU_LAYERS']}")


def reference_arguments(converter: str, env: str | None, log: str) -> str:
    """scripts/reference_converter.py's --env (its environment's record, unless conda provides it) and --log
    (named in its errors), for the models llama.cpp's converter converts."""
    if converter != "llama.cpp":
        return ""
    return (f"--env {shlex.quote(env)} " if env else "") + f"--log {shlex.quote(log)}"


def model_size_mb(models_dir: str, model: str) -> int:
    """The size of the files conversion reads: what the converter's memory and time grow with."""
    return sum(os.path.getsize(f) for f in pipeline.model_files(models_dir, model)) // 2**20


def convert_mem_mb(size_mb: int, converter: str, attempt: int = 1) -> int:
    """Our converter streams: about 15% of the model (README, Performance). llama.cpp's loads lazily; torch and
    transformers take about 300 MB, and its peak was 664 MiB for a 424 MiB model and 887 MiB for 2.3 GiB
    (README, Choosing the converter). A retry (Slurm killed the job for memory or time) asks for more."""
    if converter == "llama.cpp":
        return (1024 + size_mb // 2) * attempt
    return (512 + size_mb // 5) * attempt


def convert_runtime(size_mb: int, converter: str, attempt: int = 1) -> int:
    """Minutes: ours converts at 400 MB/s or more, llama.cpp's at about 80 MB/s after 8 s of start-up
    (README, Performance)."""
    if converter == "llama.cpp":
        return (10 + size_mb // 1500) * attempt
    return (10 + size_mb // 6000) * attempt


def code_digest(root: str, *names: str) -> str:
    """sha256 of files and packages (their .py files) under root, named relative to it: a param of the rules
    that run them, so that editing the code reruns them. (Snakemake's code trigger sees only a rule's own text,
    and scripts given to `script:` are compared by mtime, which a fresh checkout resets.)"""
    h = hashlib.sha256()
    for name in names:
        top = os.path.join(root, name)
        if not os.path.exists(top):
            raise FileNotFoundError(f"code_digest: {top} does not exist")
        if os.path.isfile(top):
            paths = [top]
        else:
            paths = [os.path.join(d, f) for d, _, files in os.walk(top) for f in files if f.endswith(".py")]
        for path in sorted(paths):
            h.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def budget_arguments(inputs) -> str:
    """scripts/budget.py's --report and --speed, for those among a budget check's inputs."""
    names = inputs.keys()
    return " ".join(f"--{name} {shlex.quote(inputs[name])}" for name in ("report", "speed") if name in names)


def cancel_rescheduling_timers() -> int:
    """Cancels the wake-up timers that Snakemake's job scheduler leaves behind, and returns how many.

    With its job rate limiter on (always, outside dry runs: --max-jobs-per-timespan, default 100/1s), every pass
    of the scheduler (JobScheduler._schedule_reevalutation, Snakemake 9) starts a threading.Timer that wakes it
    again a second later. Timers are not daemon threads, so Python waits for the last one before it exits: every
    run that executes a job ended about a second after its work was done. Called from onsuccess and onerror,
    when the scheduler has stopped and nothing waits for a wake-up."""
    import threading

    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)
              and "JobScheduler._schedule_reevalutation" in getattr(t.function, "__qualname__", "")]
    for t in timers:
        t.cancel()
    return len(timers)

"""Shared fixtures: a temporary copy of the workflow, a Snakemake runner, and tiny synthetic GPT-2 folders."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
TINY = ROOT / "models" / "tiny-gpt2"
WORKFLOW_FILES = ("Snakefile", "rules", "models", "scripts", "profiles", "envs")
# The tests' own configuration, in the layout of configurations/ (which users edit): every test workflow gets it.
TEST_CONFIG = ROOT / "tests" / "configurations"


def copy_workflow(dest: Path, configurations: Path = TEST_CONFIG) -> Path:
    """A copy of the workflow in dest, with configurations (the tests' own by default) as its configurations/."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    shutil.copytree(configurations, dest / "configurations")
    return dest


def pair_yamls(configurations: Path = TEST_CONFIG) -> dict[str, dict]:
    """{pair: its YAML's fields} for the llama.cpp pairs (*_LLAMA folders) of a configuration, read with plain yaml,
    not with the workflow's code, so that the expectations derived from it are independent of the code under test."""
    import yaml

    return {d.name: yaml.safe_load((d / f"converter_args_{d.name.lower()}.yaml").read_text()) or {}
            for d in sorted(configurations.iterdir()) if d.is_dir() and d.name.endswith("_LLAMA")}


def configured_pairs(configurations: Path = TEST_CONFIG) -> dict[str, str]:
    """{pair: PRECISION} of a configuration (the tests' own by default)."""
    return {pair: fields["PRECISION"] for pair, fields in pair_yamls(configurations).items()}


# the precisions the converter writes itself (README's precision table); llama-quantize makes the others
DIRECT_PRECISIONS = ("F32", "F16", "FP16", "BF16", "Q8_0")


def file_type(precision: str):
    """The gguf.LlamaFileType an output of precision declares (FP16 is a synonym of F16); None if gguf has no name
    for it."""
    import gguf

    name = {"FP16": "MOSTLY_F16", "F32": "ALL_F32"}.get(precision, f"MOSTLY_{precision}")
    return gguf.LlamaFileType.__members__.get(name)


class Run:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.output = proc.stdout + proc.stderr

    def jobs(self) -> dict[str, int]:
        """Job counts per rule, from Snakemake's 'Job stats' table (empty when nothing ran)."""
        counts: dict[str, int] = {}
        m = re.search(r"Job stats:\n(.*?)\n\s*total", self.output, re.S)
        if m:
            for line in m.group(1).splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    counts[parts[0]] = int(parts[1])
        counts.pop("all", None)
        return counts


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> Run:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env={**os.environ, **(env or {})})
    run = Run(proc)
    if check and run.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({run.returncode}):\n{run.output[-6000:]}")
    return run


def build_fixtures(workdir: Path, names, precision: str = "Q4_K_M") -> Run:
    """Places the fixture checkpoints (tests/generators/models.py) under models/ and builds each one's GPU_LLM_LLAMA
    output at precision with its validation JSON; each model is converted, quantized and validated once."""
    from reference import ensure_models

    names = list(names)
    for name, folder in ensure_models(names, log=print).items():
        shutil.copytree(folder, workdir / "models" / name, ignore=shutil.ignore_patterns("reference_logits.npz"))
    run = snakemake(workdir, *[f"outputs/GPU_LLM_LLAMA/{m}-{precision}{suffix}" for m in names
                               for suffix in (".gguf", ".json")])
    jobs = run.jobs()
    assert (jobs["convert"], jobs["quantize"], jobs["validate"]) == (len(names),) * 3, run.output
    return run


@pytest.fixture
def workflow(tmp_path) -> Path:
    return copy_workflow(tmp_path / "wf")


def linked_copy(fixture: Path, dest: Path) -> Path:
    """A fixture's folder with its weights linked, so that a test can change config.json or the tokenizer."""
    dest.mkdir()
    for f in fixture.iterdir():
        (dest / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copy(f, dest / f.name)
    return dest


def edit_json(path: Path, change) -> None:
    """Applies change(data) to a JSON file in place."""
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def edit_yaml(path: Path, change) -> None:
    """Applies change(data) to a YAML file in place (its comments are not kept)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def write_safetensors(path: Path, arrays: dict[str, np.ndarray], bf16: bool = False) -> None:
    """Writes the safetensors format directly (numpy cannot express bf16: uint16 arrays are stored as BF16)."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint16): "BF16" if bf16 else "U16"}
    header, offset = {}, 0
    for name, a in arrays.items():
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a).tobytes())


def make_gpt2(folder: Path, *, n_embd=64, n_layer=2, n_head=2, n_positions=64, vocab_rows=1024,
              dtype="F16", prefix="", tie=True, shards=1, n_inner=None, config_extra=None, drop_config=(),
              seed=0) -> Path:
    """A small random GPT-2 folder with tiny-gpt2's tokenizer; dtype F32, F16 or BF16."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(TINY / f, folder / f)
    t = {"wte.weight": (vocab_rows, n_embd), "wpe.weight": (n_positions, n_embd), "ln_f.weight": (n_embd,),
         "ln_f.bias": (n_embd,)}
    ff = n_inner or 4 * n_embd
    for i in range(n_layer):
        p = f"h.{i}."
        t |= {p + "ln_1.weight": (n_embd,), p + "ln_1.bias": (n_embd,), p + "ln_2.weight": (n_embd,),
              p + "ln_2.bias": (n_embd,), p + "attn.c_attn.weight": (n_embd, 3 * n_embd),
              p + "attn.c_attn.bias": (3 * n_embd,), p + "attn.c_proj.weight": (n_embd, n_embd),
              p + "attn.c_proj.bias": (n_embd,), p + "mlp.c_fc.weight": (n_embd, ff),
              p + "mlp.c_fc.bias": (ff,), p + "mlp.c_proj.weight": (ff, n_embd),
              p + "mlp.c_proj.bias": (n_embd,), p + "attn.bias": (1, 1, n_positions, n_positions)}
    if not tie:
        t["lm_head.weight"] = (vocab_rows, n_embd)
    arrays = {}
    for name, shape in t.items():
        a = rng.standard_normal(shape).astype(np.float32) * 0.1
        if dtype == "F16":
            a = a.astype(np.float16)
        elif dtype == "BF16":
            a = (a.view(np.uint32) >> 16).astype(np.uint16)
        arrays[prefix + name] = a
    names = sorted(arrays)
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / fname, {n: arrays[n] for n in group}, bf16=dtype == "BF16")
        weight_map |= {n: fname for n in group}
    if shards > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": n_embd, "n_layer": n_layer,
              "n_head": n_head, "n_positions": n_positions, "n_ctx": n_positions, "vocab_size": vocab_rows,
              "layer_norm_epsilon": 1e-5, "bos_token_id": 999, "eos_token_id": 999, "tie_word_embeddings": tie,
              "n_inner": n_inner}
    config |= config_extra or {}
    for k in drop_config:
        config.pop(k, None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def llama_quantize() -> str:
    """llama-quantize from the toolchain cache (built once per machine; minutes the first time)."""
    import llama_toolchain

    return str(llama_toolchain.build(["llama-quantize"]) / "llama-quantize")

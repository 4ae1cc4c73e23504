"""Many models in one run: MODEL_NAME as a list builds every model for every pair with one report; with
--keep-going one model's failure leaves the others' results and a summary of what failed; KEEP_INTERMEDIATE: false
drops the intermediates and the README's peak-disk formula holds."""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import TINY, configured_pairs, copy_workflow, edit_yaml, linked_copy, snakemake

pytestmark = pytest.mark.workflow

PAIRS = configured_pairs()


def set_config(wf: Path, **fields) -> None:
    edit_yaml(wf / "configurations" / "converter_args.yaml", lambda d: d.update(fields))


def outputs(model: str) -> list[Path]:
    return [Path("outputs") / pair / f"{model}-{precision}.gguf" for pair, precision in PAIRS.items()]


@pytest.mark.slow
def test_a_list_of_models_builds_every_model_for_every_pair_with_one_report(tmp_path):
    from reference import ensure_models

    wf = copy_workflow(tmp_path / "wf")
    models = ["tiny-gpt2", "qwen2"]
    for name, folder in ensure_models(models[1:], log=print).items():
        shutil.copytree(folder, wf / "models" / name, ignore=shutil.ignore_patterns("reference_logits.npz"))
    set_config(wf, MODEL_NAME=models)
    run = snakemake(wf)
    jobs = run.jobs()
    assert jobs["validate"] == jobs["checksum"] == len(models) * len(PAIRS) and jobs["plot"] == 1, run.output
    architectures = {"tiny-gpt2": "gpt2", "qwen2": "qwen2"}
    for model in models:
        for out in outputs(model):
            reader = gguf.GGUFReader(wf / out)
            field = reader.fields["general.architecture"]
            assert bytes(field.parts[field.data[0]]).decode() == architectures[model]
            assert (wf / f"{out}.sha256").read_text().split()[0] == hashlib.sha256((wf / out).read_bytes()).hexdigest()
            assert (wf / out.with_suffix(".json")).exists()
            assert f"{out}: " in run.stderr  # the end-of-run summary: one line per output
    # one report: a row per model, a column per pair
    table = (wf / "outputs/report/validation.html").read_text()
    overview = table.split("<h3>Each pair</h3>")[0]
    assert all(f"<td>{m}</td>" in overview for m in models) and all(f"<th>{p}</th>" in overview for p in PAIRS)
    assert overview.count("<tr>") == 1 + len(models) and "—" not in overview
    assert "Nothing to be done" in snakemake(wf).output


def broken_copy(dest: Path) -> Path:
    """tiny-gpt2 with its weights cut short: the header reads (so the job graph is built), conversion fails."""
    folder = linked_copy(TINY, dest)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data[:-100])
    return folder


def test_keep_going_finishes_the_other_models_and_says_what_failed_where(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    linked_copy(TINY, wf / "models" / "good")
    broken_copy(wf / "models" / "broken")
    set_config(wf, MODEL_NAME=["broken", "good"])
    run = snakemake(wf, "--keep-going", check=False)
    assert run.returncode != 0
    for out in outputs("good"):
        assert (wf / out).exists() and (wf / out.with_suffix(".json")).exists(), run.output[-3000:]
        assert f"{out}: " in run.stderr
    assert not list((wf / "outputs").glob("*/broken-*")), "a failed model left an output behind"
    summary = run.stderr[run.stderr.rindex("targets made"):]
    failed = [line.split("log: ")[1] for line in summary.splitlines() if line.strip().startswith("log: ")]
    assert failed and all(log.startswith("outputs/logs/convert/broken-") for log in failed), summary
    assert all("not a valid safetensors" in (wf / log).read_text() for log in failed)
    for out in outputs("broken"):
        assert f"not made: {out}" in summary
    assert "not made: outputs/report/size_vs_kld.png" in summary  # the report waits for every model


def tree_size(root: Path) -> dict[str, int]:
    sizes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("toolchain", "logs")]
        for name in filenames:
            try:
                sizes[os.path.join(dirpath, name)] = os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return sizes


class DiskSampler:
    """The total size of outputs/ (without logs and the toolchain), sampled every millisecond during a run."""

    def __init__(self, root: Path):
        self.root, self.peak, self.seen, self.done = root, 0, {}, False
        self.on_sample = lambda sizes: None
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while not self.done:
            sizes = tree_size(self.root)
            self.peak = max(self.peak, sum(sizes.values()))
            for path, size in sizes.items():
                self.seen[path] = max(size, self.seen.get(path, 0))
            self.on_sample(sizes)
            time.sleep(0.001)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()


def test_without_keep_intermediate_the_intermediates_go_and_the_peak_disk_formula_holds(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    set_config(wf, KEEP_INTERMEDIATE=False)
    with DiskSampler(wf / "outputs") as disk:
        run = snakemake(wf, "--cores", "1")
    assert "Removing temporary output" in run.output
    assert not list((wf / "outputs/intermediate").glob("*.gguf")), "KEEP_INTERMEDIATE: false kept an intermediate"
    intermediates = {p: s for p, s in disk.seen.items() if "/intermediate/" in p and p.endswith(".gguf")}
    # the README's formula: peak = the intermediates + every pair's output + the validation base + small files
    # (checksums, reports, fingerprints); what stays is the same without the intermediates
    pair_outputs = sum((wf / o).stat().st_size for o in outputs("tiny-gpt2"))
    base = (wf / "outputs/validation/tiny-gpt2.kld").stat().st_size
    final = sum(tree_size(wf / "outputs").values())
    small = final - pair_outputs - base
    assert 0 < small < 200_000, small
    full = max(intermediates.values())
    assert sorted(Path(p).name for p in intermediates) == ["tiny-gpt2-F16.gguf", "tiny-gpt2-Q8_0.gguf"]
    assert disk.peak <= sum(intermediates.values()) + pair_outputs + base + small
    assert disk.peak >= final + full // 2, "the intermediate was never there beside the outputs"
    # the intermediate is 2 bytes per weight (F16; a little more for the norms and biases, which stay F32), plus the
    # vocabulary and a header; GPT-2's attention masks (h.N.attn.bias) are buffers, not weights
    from safetensors import safe_open

    with safe_open(TINY / "model.safetensors", "np") as f:
        params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys() if not k.endswith(".attn.bias"))
    assert 2 * params < full < 2 * params + 2**20, (params, full)
    # reruns stay incremental: nothing to do; a precision change converts the model again for the new output
    assert "Nothing to be done" in snakemake(wf).output
    pair = next(p for p, q in PAIRS.items() if q not in ("Q5_0", "FP16", "F16", "Q8_0"))
    edit_yaml(wf / "configurations" / pair / f"converter_args_{pair.lower()}.yaml", lambda d: d.update(PRECISION="Q5_0"))
    jobs = snakemake(wf).jobs()
    assert jobs["convert"] == 1 and jobs["quantize"] >= 1, jobs
    assert (wf / f"outputs/{pair}/tiny-gpt2-Q5_0.gguf").exists()
    assert not list((wf / "outputs/intermediate").glob("*.gguf"))


def test_a_batch_frees_each_models_intermediate_before_converting_many_more(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    models = ["m1", "m2", "m3", "m4"]
    for name in models:
        linked_copy(TINY, wf / "models" / name)
    set_config(wf, MODEL_NAME=models, KEEP_INTERMEDIATE=False, VALIDATE=False)
    held = []  # at each sample, the models whose intermediates are on disk
    with DiskSampler(wf / "outputs") as disk:
        disk.on_sample = lambda sizes: held.append({Path(p).name.lstrip(".").split("-")[0] for p in sizes
                                                    if "/intermediate/" in p and ".gguf" in p})  # or its .tmp
        snakemake(wf, "--cores", "1")
    assert set().union(*held) == set(models), "the sampler missed the intermediates"
    # a model's outputs are made (rule priorities) before more than one other model is converted
    assert max(len(h) for h in held) <= 2, max(held, key=len)
    assert not list((wf / "outputs/intermediate").glob("*.gguf"))

"""The speed of each output (rule speed, scripts/speed.py): llama-bench's JSON, parsed from the real binary's output
on the tiny model; the pair fields that size the benchmark; BENCHMARK: false."""
from __future__ import annotations

import json
import subprocess

import pytest
from conftest import ROOT, configured_pairs, copy_workflow, edit_yaml, pair_yamls, snakemake

import jobs
import pipeline
import speed

pytestmark = pytest.mark.workflow
OUTPUTS = configured_pairs()
CPU, GPU = "CPU_LLM_LLAMA", "GPU_LLM_LLAMA"


def stem(pair):
    return f"outputs/{pair}/tiny-gpt2-{OUTPUTS[pair]}"


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """The CPU and GPU pairs' outputs of the tiny model, benchmarked (and nothing else of the default target)."""
    wf = copy_workflow(tmp_path_factory.mktemp("speed") / "wf")
    run = snakemake(wf, *[f"{stem(p)}.speed.json" for p in (CPU, GPU)])
    assert run.jobs()["speed"] == 2 and "validate" not in run.jobs(), run.output[-3000:]
    return wf, run


def real_bench_json(wf, pair, *extra) -> list[dict]:
    tool = next((wf / "outputs/toolchain").glob("*/bin/llama-bench"))
    cmd = speed.bench_command(str(tool), f"{stem(pair)}.gguf", 32, 8, 2, 2, 0) + list(extra)
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_the_real_llama_bench_json_is_parsed(benched):
    wf, _ = benched
    results = real_bench_json(wf, CPU)
    figures = speed.summarize(results)
    assert (figures["n_prompt"], figures["n_gen"], figures["repetitions"]) == (32, 8, 2)
    assert figures["threads"] == 2 and figures["n_gpu_layers"] == 0
    assert figures["llama_cpp_build"] == "b11312 (0c1e570)" and figures["backends"] == "CPU"
    pp, tg = results  # llama-bench's own order: prompt processing, then generation
    assert figures["prompt_tps"] == pytest.approx(pp["avg_ts"], rel=1e-4) and figures["prompt_tps"] > 0
    assert figures["generation_tps"] == pytest.approx(tg["avg_ts"], rel=1e-4) and figures["generation_tps"] > 0
    assert figures["prompt_tps_sd"] == pytest.approx(pp["stddev_ts"], rel=1e-4, abs=1e-3)
    assert len(figures["generation_samples_tps"]) == 2


def test_output_without_a_generation_test_is_refused(benched):
    wf, _ = benched
    results = real_bench_json(wf, CPU)
    with pytest.raises(ValueError, match="one prompt and one generation test"):
        speed.summarize([r for r in results if r["n_gen"] == 0])
    with pytest.raises(ValueError, match="not a list"):
        speed.summarize({"n_prompt": 1})


def test_each_benchmarked_output_has_its_speed_json(benched):
    wf, run = benched
    yamls = pair_yamls()
    for pair in (CPU, GPU):
        r = json.loads((wf / f"{stem(pair)}.speed.json").read_text())
        assert r["gguf"] == f"{stem(pair)}.gguf" and r["prompt_tps"] > 0 and r["generation_tps"] > 0
        assert r["prompt_tps_sd"] >= 0 and r["generation_tps_sd"] >= 0
        assert (r["n_prompt"], r["n_gen"], r["repetitions"]) == tuple(
            jobs.BENCH_DEFAULTS[k] for k in ("BENCH_PROMPT", "BENCH_GEN", "BENCH_REPETITIONS"))
        assert r["threads"] == 2 and r["llama_cpp_build"] == "b11312 (0c1e570)" and "backends" in r
        assert r["n_gpu_layers"] == (99 if yamls[pair].get("GPUS") else 0)
        assert f"{stem(pair)}.gguf: {pipeline.speed_summary(r)}" in run.output  # the end-of-run summary
    assert not list(wf.glob("outputs/**/.*.tmp*"))


def test_changing_a_bench_size_reruns_only_that_pairs_benchmark(benched):
    wf, _ = benched
    targets = [f"{stem(p)}.speed.json" for p in (CPU, GPU)]
    assert snakemake(wf, "-n", *targets).jobs() == {}
    edit_yaml(wf / f"configurations/{GPU}/converter_args_{GPU.lower()}.yaml", lambda d: d.update(BENCH_GEN=8))
    run = snakemake(wf, "-n", "-p", *targets)
    assert run.jobs() == {"speed": 1}, run.output[-3000:]
    assert f"{stem(GPU)}.gguf" in run.output and "--gen 8" in run.output


def test_bench_settings_defaults_and_gpu_offload():
    assert jobs.bench_settings({"PRECISION": "Q4_0"}) == {"BENCH_PROMPT": 64, "BENCH_GEN": 16,
                                                          "BENCH_REPETITIONS": 3, "GPU_LAYERS": 0}
    assert jobs.bench_settings({"GPUS": 1})["GPU_LAYERS"] == 99
    assert jobs.bench_settings({"GPUS": 1, "GPU_LAYERS": 0})["GPU_LAYERS"] == 0
    assert jobs.bench_arguments({"BENCH_PROMPT": 512, "BENCH_GEN": 128, "BENCH_REPETITIONS": 5, "GPU_LAYERS": 20}) == \
        "--prompt 512 --gen 128 --repetitions 5 --gpu-layers 20"
    schema = str(ROOT / "rules/schemas/pair.schema.yaml")
    for field, value in jobs.BENCH_DEFAULTS.items():  # the schema documents the same defaults
        assert pipeline.schema_default(schema, field) == value, field


def test_benchmark_can_be_switched_off(workflow):
    jobs_on = snakemake(workflow, "-n").jobs()
    assert jobs_on["speed"] == len(OUTPUTS) == jobs_on["validate"]
    edit_yaml(workflow / "configurations/converter_args.yaml", lambda d: d.update(BENCHMARK=False))
    jobs_off = snakemake(workflow, "-n").jobs()
    assert "speed" not in jobs_off and jobs_off["validate"] == len(OUTPUTS)


def test_summary_of_an_output_benchmarked_but_not_validated(tmp_path, capsys):
    out = tmp_path / "A_LLM_LLAMA"
    out.mkdir()
    (out / "m-Q4_0.speed.json").write_text(json.dumps({"gguf": "o/m-Q4_0.gguf", "prompt_tps": 1234.56,
                                                         "generation_tps": 78.9}))
    pipeline.print_summary([str(out / "m-Q4_0.gguf"), str(out / "m-Q4_0.speed.json")])
    assert capsys.readouterr().err == "o/m-Q4_0.gguf: pp 1234.6 t/s, tg 78.9 t/s\n"

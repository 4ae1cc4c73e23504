"""Unit tests of the decisions the rules take from scripts/ (jobs.py, and the workflow's parts of pipeline.py,
hub_download.py and llama_toolchain.py): which inputs a pair's output needs, what a job asks of a cluster, the
code digests that rerun jobs, where the tools and Hub models are, and the end of a run."""
from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, make_gpt2

import hub_download
import jobs
import llama_toolchain
import pipeline
from pipeline import ConfigError


@pytest.mark.parametrize("cfg,precision,source", [
    ({}, "Q8_0", jobs.Source("Q8_0", False)),  # written by our converter: a copy of its output
    ({}, "FP16", jobs.Source("F16", False)),  # the CECAIServe spelling
    ({}, "BF16", jobs.Source("BF16", False)),
    ({"PURE": True}, "Q8_0", jobs.Source(None, False)),  # an option needs llama-quantize
    ({"IMATRIX": True}, "F16", jobs.Source(None, True)),
    ({}, "Q4_K_M", jobs.Source(None, False)),
    ({}, "IQ2_XS", jobs.Source(None, True)),  # llama-quantize refuses it without an importance matrix
    ({"IMATRIX": True}, "Q4_K_M", jobs.Source(None, True)),
])
def test_output_source(cfg, precision, source):
    assert jobs.output_source(cfg, precision) == source


def test_output_source_refuses_what_llama_quantize_cannot_make():
    with pytest.raises(ConfigError, match="x.gguf: unknown precision 'Q9_K'"):
        jobs.output_source({}, "Q9_K", "x.gguf")
    with pytest.raises(ConfigError, match="requires an importance matrix, but the pair sets IMATRIX: false"):
        jobs.output_source({"IMATRIX": False}, "IQ1_S")


def test_quantize_arguments_are_quoted_and_split_adds_the_shard_size():
    cfg = {"TENSOR_TYPES": ["ffn_down=Q6_K"], "OUTPUT_TENSOR_TYPE": "Q8_0", "SPLIT_MAX_SIZE": "2G"}
    assert jobs.quantize_arguments(cfg, "Q4_K_M") == "--output-tensor-type q8_0 --tensor-type ffn_down=q6_k"
    assert jobs.quantize_arguments(cfg, "Q4_K_M", split=True).endswith("ffn_down=q6_k --split-max-size 2G")
    assert jobs.quantize_arguments({}, "Q4_0") == ""


def test_tool_arguments_name_the_tools_among_the_inputs():
    inputs = {"gguf": "in.gguf", "tool": "bin/llama quantize", "gguf_split": "bin/llama-gguf-split"}
    assert jobs.tool_arguments(inputs) == "--llama-quantize 'bin/llama quantize' --gguf-split bin/llama-gguf-split"
    assert jobs.tool_arguments({"gguf": "x"}) == ""


def test_pair_resource_prefers_the_pair_then_the_environment(monkeypatch):
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    assert jobs.pair_resource({}, "SLURM_PARTITION", "SBATCH_PARTITION") is None
    monkeypatch.setenv("SBATCH_PARTITION", "cpu")
    assert jobs.pair_resource({}, "SLURM_PARTITION", "SBATCH_PARTITION") == "cpu"
    assert jobs.pair_resource({"SLURM_PARTITION": "gpu"}, "SLURM_PARTITION", "SBATCH_PARTITION") == "gpu"
    assert jobs.pair_resource({"GPUS": 2}, "GPUS") == 2


def test_reference_arguments_only_for_llama_cpps_converter():
    assert jobs.reference_arguments("hf2gguf", "env.json", "x.log") == ""
    assert jobs.reference_arguments("llama.cpp", "a b.json", "x.log") == "--env 'a b.json' --log x.log"
    assert jobs.reference_arguments("llama.cpp", None, "x.log") == "--log x.log"  # --sdm conda: the job's env


@pytest.mark.parametrize("converter", ["hf2gguf", "llama.cpp"])
def test_a_retry_asks_for_more_memory_and_time(converter):
    for size in (0, 500, 140_000):
        for decide in (jobs.convert_mem_mb, jobs.convert_runtime):
            assert decide(size, converter, 2) >= 2 * decide(size, converter, 1) > 0
    # llama.cpp's converter holds more of the model than ours, which streams
    assert jobs.convert_mem_mb(10_000, "llama.cpp") > jobs.convert_mem_mb(10_000, "hf2gguf") > 10_000 // 10


def test_model_size_counts_the_files_conversion_reads(tmp_path):
    folder = make_gpt2(tmp_path / "m", n_embd=256, n_layer=4, vocab_rows=4096, dtype="F32")
    (folder / "README.md").write_bytes(b"x" * 2**21)  # not read by conversion
    read = sum(f.stat().st_size for f in folder.iterdir() if f.name != "README.md")
    assert jobs.model_size_mb(str(tmp_path), "m") == read // 2**20 > 0


def test_code_digest_follows_content_and_names(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("b = 2\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code\n")
    (tmp_path / "run.py").write_text("print()\n")
    first = jobs.code_digest(str(tmp_path), "run.py", "pkg")
    expected = hashlib.sha256()
    for name, text in (("run.py", "print()\n"), ("pkg/a.py", "a = 1\n"), ("pkg/sub/b.py", "b = 2\n")):
        expected.update(name.encode() + b"\0" + text.encode())
    assert first == expected.hexdigest()
    (tmp_path / "pkg" / "notes.txt").write_text("changed\n")  # not a .py file of the package
    os.utime(tmp_path / "run.py")  # a fresh checkout: new mtimes, same content
    assert jobs.code_digest(str(tmp_path), "run.py", "pkg") == first
    (tmp_path / "pkg" / "sub" / "b.py").write_text("b = 3\n")
    assert jobs.code_digest(str(tmp_path), "run.py", "pkg") != first
    with pytest.raises(FileNotFoundError, match="nope.py"):
        jobs.code_digest(str(tmp_path), "nope.py")


# --- pipeline.py: pairs and the default target ------------------------------------------------------------------
def write_pairs(root, pairs: dict[str, str]):
    for pair, text in pairs.items():
        (root / pair).mkdir(parents=True)
        if text is not None:
            (root / pair / f"converter_args_{pair.lower()}.yaml").write_text(text)
    return root


def test_load_pairs_validates_each_llama_pair_and_lists_the_others(tmp_path):
    root = write_pairs(tmp_path / "c", {"CPU_LLM_LLAMA": "PRECISION: Q8_0\n", "GPU_LLM_TRF": None,
                                        "ARM_LLM_LLAMA": "PRECISION: FP16\nSPLIT_MAX_SIZE: 2G\n"})
    seen = []
    pairs, direct = pipeline.load_pairs(str(root), lambda data, path: seen.append(path.name))
    assert pairs == {"ARM_LLM_LLAMA": {"PRECISION": "FP16", "SPLIT_MAX_SIZE": "2G"},
                     "CPU_LLM_LLAMA": {"PRECISION": "Q8_0"}}
    assert direct == ["GPU_LLM_TRF"]
    assert seen == ["converter_args_arm_llm_llama.yaml", "converter_args_cpu_llm_llama.yaml"]


@pytest.mark.parametrize("pairs,message", [
    ({"NPU_LLM_ONNX": "PRECISION: Q8_0\n"}, "NPU_LLM_ONNX/: unknown framework 'ONNX'"),
    ({"NPU_LLM_LLAMA": None}, "converter_args_npu_llm_llama.yaml: missing"),
    ({"NPU_LLM_LLAMA": "PRECISION: q4_0\n"}, "field PRECISION: precision 'q4_0' must be upper case"),
])
def test_load_pairs_names_the_bad_pair(tmp_path, pairs, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.load_pairs(str(write_pairs(tmp_path / "c", pairs)), lambda data, path: None)


def test_default_outputs():
    pairs = {"A_LLM_LLAMA": {"PRECISION": "Q4_0"}, "B_LLM_LLAMA": {"PRECISION": "F16", "SPLIT_MAX_TENSORS": 9}}
    assert pipeline.default_outputs(pairs, ["m"], "out", validate=False) == [
        "out/A_LLM_LLAMA/m-Q4_0.gguf", "out/B_LLM_LLAMA/m-F16",  # the folder of a split pair's shards
        "out/A_LLM_LLAMA/m-Q4_0.gguf.sha256", "out/B_LLM_LLAMA/m-F16.gguf.sha256"]
    validated = pipeline.default_outputs(pairs, ["m"], "out", validate=True)
    assert validated[4:] == ["out/A_LLM_LLAMA/m-Q4_0.json", "out/B_LLM_LLAMA/m-F16.json", "out/report/size_vs_kld.png"]
    assert pipeline.default_outputs({}, ["m"], "out", validate=True) == []
    benched = pipeline.default_outputs(pairs, ["m"], "out", validate=True, benchmark=True)
    assert benched[4:6] == validated[4:6] and benched[-1] == "out/report/size_vs_kld.png"
    assert benched[6:8] == ["out/A_LLM_LLAMA/m-Q4_0.speed.json", "out/B_LLM_LLAMA/m-F16.speed.json"]
    # the benchmark does not need the validation: without it, no report
    assert pipeline.default_outputs(pairs, ["m"], "out", validate=False, benchmark=True)[4:] == benched[6:8]
    assert [p for p in benched if pipeline.is_validation_report(p)] == validated[4:6]


def test_a_batch_builds_every_model_for_every_pair_with_one_report():
    pairs = {"A_LLM_LLAMA": {"PRECISION": "Q4_0"}, "B_LLM_LLAMA": {"PRECISION": "F16"}}
    models = pipeline.model_names(["m1", "m2", "m3"])
    outputs = pipeline.default_outputs(pairs, models, "out", validate=True)
    assert [o for o in outputs if o.endswith(".gguf")] == [
        f"out/{p}/{m}-{q}.gguf" for m in ("m1", "m2", "m3") for p, q in (("A_LLM_LLAMA", "Q4_0"), ("B_LLM_LLAMA", "F16"))]
    assert len([o for o in outputs if o.endswith(".json")]) == 6 and len(set(outputs)) == len(outputs) == 6 * 3 + 1
    assert [o for o in outputs if "report" in o] == ["out/report/size_vs_kld.png"]
    assert pipeline.model_names("m1") == ["m1"]


def test_pair_settings_explain_a_pair_without_a_gguf():
    pairs = {"GPU_LLM_LLAMA": {"PRECISION": "Q4_0"}}
    assert pipeline.pair_settings(pairs, [], "GPU_LLM_LLAMA", "t", "configurations", "models", "m") == pairs["GPU_LLM_LLAMA"]
    with pytest.raises(ConfigError, match="t: there is no pair NPU_LLM_LLAMA .*Configured pairs: GPU_LLM_LLAMA"):
        pipeline.pair_settings(pairs, [], "NPU_LLM_LLAMA", "t", "configurations", "models", "m")
    with pytest.raises(ConfigError, match="GPU_LLM_TRF: Transformers loads the Hugging Face folder models/m/"):
        pipeline.pair_settings(pairs, ["GPU_LLM_TRF"], "GPU_LLM_TRF", "t", "configurations", "models", "m")


# --- hub_download.py: which models the workflow downloads -------------------------------------------------------
def test_hub_models_by_repo_or_by_repo_and_revision(tmp_path):
    hub = {"gpt2": "openai-community/gpt2", "pinned": {"repo": "o/p", "revision": "abc123"}}
    assert hub_download.source(hub, "gpt2") == ("openai-community/gpt2", "main")
    assert hub_download.source(hub, "pinned") == ("o/p", "abc123")
    assert hub_download.source(hub, "local") is None
    models = tmp_path / "models"
    (models / "gpt2").mkdir(parents=True)  # an empty folder: still to download
    assert hub_download.pending(str(models), hub, "gpt2") and hub_download.downloads(str(models), hub, "gpt2")
    (models / "gpt2" / hub_download.SOURCE_FILE).write_text("{}")  # downloaded by the workflow: kept up to date
    assert not hub_download.pending(str(models), hub, "gpt2") and hub_download.downloads(str(models), hub, "gpt2")
    make_gpt2(models / "pinned")  # placed by hand: used as it is, never downloaded
    assert not hub_download.pending(str(models), hub, "pinned") and not hub_download.downloads(str(models), hub, "pinned")
    assert not hub_download.downloads(str(models), hub, "local")


# --- llama_toolchain.py: where the jobs find llama.cpp's tools --------------------------------------------------
def test_tool_path(tmp_path):
    assert llama_toolchain.tool_path("llama-perplexity", None, False, "tc/bin", "envs/bin") == "tc/bin/llama-perplexity"
    assert llama_toolchain.tool_path("llama-perplexity", None, True, "tc/bin", "envs/bin") == "envs/bin/llama-perplexity"
    quantize = tmp_path / "llama-quantize"
    quantize.write_text("#!/bin/sh\n")
    with pytest.raises(FileNotFoundError, match=f"LLAMA_QUANTIZE={quantize} is not an executable file"):
        llama_toolchain.tool_path("llama-quantize", str(quantize), False, "tc/bin", "envs/bin")
    quantize.chmod(quantize.stat().st_mode | stat.S_IXUSR)
    for from_env in (False, True):  # a configured binary wins over the conda env or container
        assert llama_toolchain.tool_path("llama-quantize", str(quantize), from_env, "tc/bin", "e") == str(quantize)
        assert llama_toolchain.tool_path("llama-imatrix", str(quantize), from_env, "tc/bin", "e") == \
            str(tmp_path / "llama-imatrix")


def test_the_cecaiserve_entry_point_builds_each_model_of_a_list(tmp_path):
    (tmp_path / "configurations/GPU_LLM_LLAMA").mkdir(parents=True)
    (tmp_path / "configurations/GPU_LLM_LLAMA/converter_args_gpu_llm_llama.yaml").write_text("PRECISION: Q4_K_M\n")
    general = tmp_path / "configurations/converter_args.yaml"
    general.write_text("MODEL_NAME: [a, b]\n")
    assert pipeline.pair_targets(tmp_path, "GPU_LLM_LLAMA") == ["outputs/GPU_LLM_LLAMA/a-Q4_K_M.gguf",
                                                               "outputs/GPU_LLM_LLAMA/b-Q4_K_M.gguf"]
    general.write_text("MODEL_NAME: a\nOUTPUTS_DIR: out/\n")
    assert pipeline.pair_targets(tmp_path, "GPU_LLM_LLAMA") == ["out/GPU_LLM_LLAMA/a-Q4_K_M.gguf"]
    general.write_text("MODEL_NAME: [a, 3]\n")
    with pytest.raises(ConfigError, match="MODEL_NAME must be"):
        pipeline.pair_targets(tmp_path, "GPU_LLM_LLAMA")


# --- the end of a run: Snakemake's rescheduling timers ---------------------------------------------------------
class JobScheduler:  # named as Snakemake's, whose timers jobs.cancel_rescheduling_timers looks for
    def _schedule_reevalutation(self, delay):
        timer = threading.Timer(delay, lambda: None)
        timer.start()
        return timer


def test_only_the_schedulers_timers_are_cancelled():
    ours, other = JobScheduler()._schedule_reevalutation(60), threading.Timer(60, lambda: None)
    other.start()
    try:
        assert jobs.cancel_rescheduling_timers() == 1
        ours.join(5)
        assert not ours.is_alive() and other.is_alive()
    finally:
        other.cancel()
        ours.cancel()


def test_snakemake_leaves_a_timer_that_the_end_of_run_hook_cancels(tmp_path):
    """The installed Snakemake still starts the timers the hook looks for (a renamed method would make the hook
    find none, and every run would again end a second late), and the hook finds them where it runs."""
    (tmp_path / "Snakefile").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'scripts')!r})\nimport jobs\n\n"
        "rule a:\n    output: 'a.txt'\n    shell: 'touch {output}'\n\n"
        "onsuccess:\n    print('timers cancelled:', jobs.cancel_rescheduling_timers())\n")
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    found = re.search(r"timers cancelled: (\d+)", run.stdout + run.stderr)
    assert found and int(found.group(1)) >= 1, run.stdout + run.stderr

"""Snakemake end to end, in a temporary copy of the workflow: targets, incremental rebuilds, errors, lint."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import gguf
import llama_cpp
import numpy as np
import pytest
import yaml
from conftest import (DIRECT_PRECISIONS, ROOT, TEST_CONFIG, configured_pairs, copy_workflow, edit_yaml, file_type,
                      snakemake)

pytestmark = pytest.mark.workflow

PAIRS = configured_pairs()  # {pair: PRECISION} of the tests' configuration (tests/configurations/)
N = len(PAIRS)
QUANTIZED = [q for q in PAIRS.values() if q not in DIRECT_PRECISIONS]  # made by llama-quantize


def output(wf, pair, model="tiny-gpt2"):
    return wf / "outputs" / pair / f"{model}-{PAIRS[pair]}.gguf"


def pair_yaml(wf, pair):
    return wf / "configurations" / pair / f"converter_args_{pair.lower()}.yaml"


def runs_in_llama_cpp(path) -> None:
    m = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    m.eval([39, 695, 78, 995])
    scores = np.array(m.scores[3])
    assert np.isfinite(scores).all() and scores.std() > 0.1


# the default target also checksums and validates each pair's GGUF, against one KL-divergence base per model
# and measures its speed (rule speed) when the configuration's BENCHMARK is on
BENCH = yaml.safe_load((TEST_CONFIG / "converter_args.yaml").read_text()).get("BENCHMARK", True)
SPEED = {"speed": N} if BENCH else {}
CHECKS = {"kld_base": 1, "validate": N, "checksum": N, "plot": 1, **SPEED}
ONE_OUTPUT = {"quantize": 1, "validate": 1, "checksum": 1, "plot": 1, **({"speed": 1} if BENCH else {})}


@pytest.fixture
def built(workflow):
    run = snakemake(workflow)  # convert: the F16 intermediate, and Q8_0 directly
    assert run.jobs() == {"llama_cpp": 1, "convert": 2, "quantize": N, **CHECKS}, run.output
    return workflow


def test_default_target_builds_every_pair_and_llama_cpp_runs_them(built):
    assert set(PAIRS) == {p.name for p in (built / "outputs").glob("*_LLAMA")}
    for pair, precision in PAIRS.items():
        path = output(built, pair)
        assert gguf.GGUFReader(path).fields["general.file_type"].contents() == file_type(precision), pair
        runs_in_llama_cpp(path)
    assert not list(built.glob("outputs/**/.*.tmp-*"))
    assert (built / "outputs/logs/convert/tiny-gpt2-F16.log").read_text().count("wrote ") == 1


def test_second_run_does_nothing(built):
    run = snakemake(built)
    assert run.jobs() == {} and "Nothing to be done" in run.output


def test_explicit_target_for_any_pair_and_precision(workflow):
    run = snakemake(workflow, "outputs/ARM_LLM_LLAMA/tiny-gpt2-Q5_K_M.gguf", "outputs/CPU_LLM_LLAMA/tiny-gpt2-BF16.gguf")
    assert run.jobs() == {"llama_cpp": 1, "convert": 2, "quantize": 2}
    reader = gguf.GGUFReader(workflow / "outputs/ARM_LLM_LLAMA/tiny-gpt2-Q5_K_M.gguf")
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q5_K_M
    runs_in_llama_cpp(workflow / "outputs/CPU_LLM_LLAMA/tiny-gpt2-BF16.gguf")


def test_changing_one_pairs_precision_runs_one_quantize_job(built):
    edit_yaml(pair_yaml(built, "GPU_LLM_LLAMA"), lambda d: d.update(PRECISION="Q5_K_M"))
    run = snakemake(built)
    assert run.jobs() == ONE_OUTPUT
    assert (built / "outputs/GPU_LLM_LLAMA/tiny-gpt2-Q5_K_M.gguf").exists()


def test_changing_a_model_file_rebuilds_that_model_only(built):
    shutil.copytree(built / "models/tiny-gpt2", built / "models/other-gpt2")
    other = output(built, "GPU_LLM_LLAMA", "other-gpt2")
    assert snakemake(built, str(other.relative_to(built))).jobs() == {"convert": 1, "quantize": 1}
    before = {p: p.stat().st_mtime_ns for p in built.glob("outputs/*/other-gpt2-*.gguf")}
    weights = built / "models/tiny-gpt2/model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last tensor's data
    weights.write_bytes(bytes(raw))
    run = snakemake(built, "all", str(other.relative_to(built)))
    assert run.jobs() == {"convert": 2, "quantize": N, **CHECKS}
    assert "other-gpt2" not in run.output.split("Job stats")[0].replace(f"{other.relative_to(built)}", "")
    assert {p: p.stat().st_mtime_ns for p in built.glob("outputs/*/other-gpt2-*.gguf")} == before


def test_changing_a_config_file_reconverts(built):
    config = built / "models/tiny-gpt2/config.json"
    config.write_text(config.read_text().replace('"layer_norm_epsilon": 1e-05', '"layer_norm_epsilon": 1e-06'))
    run = snakemake(built)
    assert run.jobs() == {"convert": 2, "quantize": N, **CHECKS}
    eps = gguf.GGUFReader(output(built, "GPU_LLM_LLAMA")).fields["gpt2.attention.layer_norm_epsilon"].contents()
    assert eps == pytest.approx(1e-6)


def test_changing_the_converter_code_reconverts(built):
    code = built / "scripts/hf2gguf/architectures/gpt2.py"
    code.write_text(code.read_text() + "\n# a change\n")
    run = snakemake(built, "-n")
    assert run.jobs()["convert"] == 2


def test_touching_a_small_input_without_changing_it_rebuilds_nothing(built):
    os.utime(built / "models/tiny-gpt2/config.json")
    os.utime(pair_yaml(built, "GPU_LLM_LLAMA"))
    assert snakemake(built, "-n").jobs() == {}


def test_new_toolchain_flags_make_quantized_outputs_stale(built):
    edit_yaml(built / "configurations/converter_args.yaml", lambda d: d.update(LLAMA_CPP_NATIVE=True))
    run = snakemake(built, "-n")
    # the outputs of llama-quantize, and every validation (a new llama-perplexity)
    n = len(QUANTIZED)
    # (and every benchmark: a new llama-bench)
    assert run.jobs() == {"llama_cpp": 1, "quantize": n, "checksum": n, "kld_base": 1, "validate": N, "plot": 1,
                          **SPEED}


def test_the_same_build_copied_again_remakes_nothing(built):
    """A tool added to rule llama_cpp copies the same build again, with new mtimes: its folder name is its key."""
    for tool in (built / "outputs/toolchain").glob("llama.cpp-*/bin/*"):
        os.utime(tool)
    assert snakemake(built, "-n").jobs() == {}


def test_existing_llama_quantize_is_used_without_building(workflow, llama_quantize):
    run = snakemake(workflow, "-n", env={"LLAMA_QUANTIZE": llama_quantize})
    assert "llama_cpp" not in run.jobs() and run.jobs()["quantize"] == N and run.jobs()["validate"] == N
    bad = snakemake(workflow, "-n", check=False, env={"LLAMA_QUANTIZE": "/nonexistent/llama-quantize"})
    assert bad.returncode != 0 and "LLAMA_QUANTIZE=/nonexistent/llama-quantize is not an executable file" in bad.output


# --- errors: one clear message, before any job runs --------------------------------------------------------------
def failing(wf, *args):
    run = snakemake(wf, *args, check=False)
    assert run.returncode != 0
    assert not (wf / "outputs").exists() or not list((wf / "outputs").glob("*/*.gguf"))
    return run.output


def test_unknown_precision_is_refused_listing_the_valid_names(workflow):
    out = failing(workflow, "outputs/GPU_LLM_LLAMA/tiny-gpt2-Q9_K.gguf")
    assert "unknown precision 'Q9_K'. Valid precisions: F32, F16, BF16, Q8_0" in out


def test_lower_case_precision_is_refused_with_a_hint(workflow):
    assert "use 'Q4_K_M'" in failing(workflow, "outputs/GPU_LLM_LLAMA/tiny-gpt2-q4_k_m.gguf")


def test_unknown_pair_lists_the_configured_ones(workflow):
    out = failing(workflow, "outputs/NPU_LLM_LLAMA/tiny-gpt2-Q4_0.gguf")
    assert "no pair NPU_LLM_LLAMA" in out and ", ".join(sorted(PAIRS)) in out


def test_missing_model_lists_the_existing_folders(workflow):
    edit_yaml(workflow / "configurations/converter_args.yaml", lambda d: d.update(MODEL_NAME="llama-7b"))
    out = failing(workflow)
    assert "models/llama-7b/: no such model folder" in out and "Existing model folders: tiny-gpt2" in out


def test_bad_pair_yaml_names_the_file_and_field(workflow):
    path = "configurations/CPU_LLM_LLAMA/converter_args_cpu_llm_llama.yaml"
    (workflow / path).write_text("PRECISION: Q4_0\nPRECISSION: Q8_0\n")
    out = failing(workflow, "-n")
    assert path in out and "PRECISSION" in out
    (workflow / path).write_text("PRECISION: Q4_Z\n")
    out = failing(workflow, "-n")
    assert path in out and "field PRECISION" in out and "unknown precision 'Q4_Z'" in out


def test_pair_folder_without_its_yaml(workflow):
    (workflow / "configurations/NPU_LLM_LLAMA").mkdir()
    assert "converter_args_npu_llm_llama.yaml: missing" in failing(workflow, "-n")


def test_transformers_pairs_say_they_need_no_conversion(workflow):
    (workflow / "configurations/GPU_LLM_TRF").mkdir()
    run = snakemake(workflow, "-n")
    assert "GPU_LLM_TRF: Transformers loads the Hugging Face folder models/tiny-gpt2/ directly" in run.output
    assert "Transformers loads the Hugging Face folder" in failing(workflow, "outputs/GPU_LLM_TRF/tiny-gpt2-F16.gguf")


# --- entry points and hygiene ---------------------------------------------------------------------------------------
def test_cecaiserve_entry_point(tmp_path):
    converter = tmp_path / "Converter"
    shutil.copytree(TEST_CONFIG, converter / "configurations")
    shutil.copytree(ROOT / "models", converter / "models")
    env = {**os.environ, "PYTHON": sys.executable, "CORES": "2"}
    proc = subprocess.run([ROOT / "scripts/cecaiserve_convert.sh", "GPU_LLM_LLAMA", converter], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((converter / "outputs/GPU_LLM_LLAMA").iterdir()) == [output(converter, "GPU_LLM_LLAMA")]
    assert not (converter / "outputs/ARM_LLM_LLAMA").exists()


def test_lint_and_format_are_clean():
    run = snakemake(ROOT, "--lint", check=False)
    assert run.returncode == 0 and "Congratulations" in run.output, run.output[-3000:]
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules/"], cwd=ROOT,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


# --- incremental in CI: a fresh checkout gives every input a new mtime ----------------------------------------------
def fresh_checkout_with_cached_outputs(built, dest, with_metadata: bool):
    """What a CI job sees: the workflow checked out anew (every file's mtime 'now'), outputs/ restored from a
    cache with their own mtimes, and, optionally, .snakemake/ too."""
    wf = copy_workflow(dest)
    shutil.rmtree(wf / "models")
    shutil.copytree(built / "models", wf / "models")  # the repository's models, other-gpt2 included
    shutil.copytree(built / "outputs", wf / "outputs")  # copy2: the cache keeps the outputs' mtimes
    if with_metadata:
        shutil.copytree(built / ".snakemake", wf / ".snakemake", ignore=shutil.ignore_patterns("locks", "incomplete"))
    now = time.time() + 5
    for path in wf.rglob("*"):
        if path.is_file() and "outputs" not in path.relative_to(wf).parts and ".snakemake" not in path.parts:
            os.utime(path, (now, now))
    return wf


@pytest.mark.parametrize("with_metadata", [True, False], ids=["with .snakemake", "without .snakemake"])
def test_fresh_checkout_with_restored_outputs_rebuilds_nothing(built, tmp_path, with_metadata):
    shutil.copytree(built / "models/tiny-gpt2", built / "models/other-gpt2")
    other = str(output(built, "GPU_LLM_LLAMA", "other-gpt2").relative_to(built))
    snakemake(built, other)
    ci = fresh_checkout_with_cached_outputs(built, tmp_path / "ci", with_metadata)
    run = snakemake(ci, "all", other)
    assert run.jobs() == {}, run.output
    # one byte of one shard: exactly that model is rebuilt
    shard = ci / "models/other-gpt2/model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-2] ^= 0x40
    shard.write_bytes(bytes(raw))
    run = snakemake(ci, "all", other)
    assert run.jobs() == {"convert": 1, "quantize": 1}, run.output
    assert "tiny-gpt2" not in "".join(l for l in run.output.splitlines() if l.strip().startswith("output:"))


# --- used as a module of another workflow -----------------------------------------------------------------------------
def test_usable_as_a_module_with_its_own_folders(tmp_path):
    outer = tmp_path / "outer"
    (outer / "pairs/GPU_LLM_LLAMA").mkdir(parents=True)
    (outer / "pairs/GPU_LLM_LLAMA/converter_args_gpu_llm_llama.yaml").write_text("PRECISION: Q5_K_M\n")
    shutil.copytree(ROOT / "models/tiny-gpt2", outer / "checkpoints/mine")
    (outer / "config.yaml").write_text(
        "gguf:\n  MODEL_NAME: mine\n  MODELS_DIR: checkpoints\n  OUTPUTS_DIR: build/gguf\n"
        "  CONFIGURATIONS_DIR: pairs\n")
    (outer / "Snakefile").write_text(f'''configfile: "config.yaml"


module gguf:
    snakefile:
        "{ROOT / "Snakefile"}"
    config:
        config["gguf"]


use rule * from gguf as gguf_*


rule all:
    default_target: True
    input:
        "build/gguf/GPU_LLM_LLAMA/mine-Q5_K_M.gguf",
''')
    run = snakemake(outer)
    assert run.jobs() == {"gguf_llama_cpp": 1, "gguf_convert": 1, "gguf_quantize": 1}, run.output
    reader = gguf.GGUFReader(outer / "build/gguf/GPU_LLM_LLAMA/mine-Q5_K_M.gguf")
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q5_K_M
    assert reader.fields["general.name"].contents() == "mine"
    assert not (outer / "outputs").exists() and (outer / "build/gguf/logs/convert/mine-F16.log").exists()
    assert snakemake(outer).jobs() == {}


# --- quantization options -----------------------------------------------------------------------------------------
def test_iq2_xs_makes_and_uses_an_importance_matrix(workflow):
    target = "outputs/GPU_LLM_LLAMA/tiny-gpt2-IQ2_XS.gguf"
    run = snakemake(workflow, target)
    assert run.jobs() == {"llama_cpp": 1, "convert": 1, "imatrix": 1, "quantize": 1}, run.output
    assert (workflow / "outputs/imatrix/tiny-gpt2.gguf").stat().st_size > 0
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(workflow / target).tensors}
    assert gguf.GGMLQuantizationType.IQ2_XS in types.values()
    runs_in_llama_cpp(workflow / target)
    assert "--imatrix outputs/imatrix/tiny-gpt2.gguf" in run.output


def test_pair_overrides_reach_the_tensor_types_and_rerun_only_that_pair(built):
    edit_yaml(pair_yaml(built, "GPU_LLM_LLAMA"),
              lambda d: d.update(TOKEN_EMBEDDING_TYPE="Q8_0", TENSOR_TYPES=["ffn_down=Q8_0"]))
    run = snakemake(built)
    assert run.jobs() == ONE_OUTPUT
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(output(built, "GPU_LLM_LLAMA")).tensors}
    assert types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == types["blk.1.ffn_down.weight"] == "Q8_0"
    assert types["blk.0.ffn_up.weight"] == "Q4_K"


def test_imatrix_false_with_a_precision_that_needs_one(workflow):
    pair_yaml(workflow, "GPU_LLM_LLAMA").write_text("PRECISION: IQ2_XS\nIMATRIX: false\n")
    run = snakemake(workflow, "-n", check=False)
    assert run.returncode != 0 and "requires an importance matrix, but the pair sets IMATRIX: false" in run.output

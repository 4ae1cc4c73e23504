"""Pair options beyond the precision, end to end: outputs split into shards, further llama-quantize arguments
from an allow-list, and the refusal to quantize an already quantized model again."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import yaml
from conftest import ROOT, TEST_CONFIG, configured_pairs, copy_workflow, snakemake

pytestmark = pytest.mark.workflow

PAIR = "GPU_LLM_LLAMA"
YAML = f"configurations/{PAIR}/converter_args_gpu_llm_llama.yaml"
SINGLE = f"outputs/{PAIR}/tiny-gpt2-Q4_K_M.gguf"
SPLIT = f"outputs/{PAIR}/tiny-gpt2-Q4_K_M"
TOKENS = [39, 695, 78, 995, 11, 290]
N = len(configured_pairs())  # the pairs of the tests' configuration (tests/configurations/)
# the default target benchmarks every output (rule speed) when the configuration's BENCHMARK is on
BENCH = yaml.safe_load((TEST_CONFIG / "converter_args.yaml").read_text()).get("BENCHMARK", True)
SPEED = {"speed": 1} if BENCH else {}


def set_pair(wf, text: str) -> None:
    (wf / YAML).write_text(text)


def shards(folder, n=None) -> list:
    """The folder's files, checked to be exactly NAME-0000i-of-0000n.gguf for i = 1..n (and Snakemake's
    .snakemake_timestamp)."""
    files = sorted(p.name for p in folder.iterdir() if p.name != ".snakemake_timestamp")
    n = n or len(files)
    assert files == [f"{folder.name}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)], files
    return [folder / f for f in files]


def contents(paths) -> tuple[dict, dict]:
    """({tensor name: (type, bytes)}, {key: value}) over one GGUF or a set of shards; the split.* keys and
    the header counts (GGUF.*) are left out, a tensor in two shards fails."""
    tensors, kv = {}, {}
    for path in paths:
        reader = gguf.GGUFReader(path)
        for t in reader.tensors:
            assert t.name not in tensors, f"{t.name} is in two shards"
            tensors[t.name] = (t.tensor_type.name, np.asarray(t.data).tobytes())
        for key, field in reader.fields.items():
            if not key.startswith(("split.", "GGUF.")):
                assert key not in kv, f"{key} is in two shards"
                kv[key] = field.contents()
    return tensors, kv


def logits(path) -> np.ndarray:
    m = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    m.eval(TOKENS)
    return np.array(m.scores[: len(TOKENS)])


# --- split outputs ------------------------------------------------------------------------------------------------
def test_split_output_loads_in_llama_cpp_and_holds_the_single_files_tensors(workflow):
    set_pair(workflow, "PRECISION: Q4_K_M\nSPLIT_MAX_TENSORS: 10\n")
    run = snakemake(workflow, SPLIT, SINGLE)
    assert run.jobs() == {"llama_cpp": 1, "convert": 1, "quantize": 1, "quantize_split": 1}, run.output
    parts = shards(workflow / SPLIT)
    n_tensors = len(gguf.GGUFReader(workflow / SINGLE).tensors)
    assert len(parts) == -(-n_tensors // 10) >= 3
    assert contents(parts) == contents([workflow / SINGLE])
    # llama.cpp finds the other shards from the first and computes exactly what the single file gives
    first = logits(parts[0])
    assert np.isfinite(first).all() and first.std() > 0.1
    assert np.array_equal(first, logits(workflow / SINGLE))
    assert not list(workflow.glob("outputs/**/.*tmp*"))
    assert snakemake(workflow, SPLIT, SINGLE).jobs() == {}


def test_split_by_size_of_a_direct_precision(workflow):
    """FP16 needs no llama-quantize: the converter's F16 GGUF itself is split, in shards of at most 1 MB."""
    yaml = workflow / "configurations/AGX_ORIN_LLM_LLAMA/converter_args_agx_orin_llm_llama.yaml"
    yaml.write_text("PRECISION: FP16\nSPLIT_MAX_SIZE: 1M\n")
    folder = "outputs/AGX_ORIN_LLM_LLAMA/tiny-gpt2-FP16"
    run = snakemake(workflow, folder)
    assert run.jobs() == {"llama_cpp": 1, "convert": 1, "quantize_split": 1}, run.output
    assert "llama-gguf-split --split --split-max-size 1M outputs/intermediate/tiny-gpt2-F16.gguf " in run.output
    assert "bin/llama-quantize " not in run.output
    parts = shards(workflow / folder)
    intermediate = workflow / "outputs/intermediate/tiny-gpt2-F16.gguf"
    assert len(parts) >= 2 and sum(p.stat().st_size for p in parts) >= intermediate.stat().st_size
    for part in parts:  # each shard stays under the limit, unless a single tensor is larger
        assert part.stat().st_size <= 1_000_000 or len(gguf.GGUFReader(part).tensors) == 1
    assert contents(parts) == contents([intermediate])
    assert np.isfinite(logits(parts[0])).all()


def test_split_pair_is_validated_and_checksummed_and_only_its_outputs_follow_the_split_option(workflow):
    set_pair(workflow, "PRECISION: Q4_K_M\nSPLIT_MAX_TENSORS: 10\n")
    run = snakemake(workflow)
    assert run.jobs() == {"llama_cpp": 1, "convert": 2, "quantize": N - 1, "quantize_split": 1, "kld_base": 1,
                          "validate": N, "checksum": N, "plot": 1, **{k: N for k in SPEED}}, run.output
    assert not (workflow / SINGLE).exists()  # the whole file is not kept beside its shards
    parts = shards(workflow / SPLIT)
    listed = (workflow / f"{SINGLE}.sha256").read_text()
    assert listed == "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  tiny-gpt2-Q4_K_M/{p.name}\n"
                             for p in parts)
    check = subprocess.run(["sha256sum", "-c", f"{SINGLE}.sha256".split("/")[-1]], cwd=workflow / f"outputs/{PAIR}",
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(parts), check.stdout + check.stderr
    report = json.loads((workflow / f"outputs/{PAIR}/tiny-gpt2-Q4_K_M.json").read_text())
    assert report["loaded"] and report["file_bytes"] == sum(p.stat().st_size for p in parts)
    assert report["tensors_by_type"]["Q4_K"] > 0 and 0 < report["kl_divergence"] < 1
    assert f"{SPLIT}: " in run.output  # the end-of-run summary names the folder
    assert snakemake(workflow).jobs() == {}

    others = {p: p.stat().st_mtime_ns for p in workflow.glob("outputs/*_LLAMA/*.gguf")}
    set_pair(workflow, "PRECISION: Q4_K_M\nSPLIT_MAX_TENSORS: 20\n")
    run = snakemake(workflow)
    assert run.jobs() == {"quantize_split": 1, "validate": 1, "checksum": 1, "plot": 1, **SPEED}, run.output
    assert len(shards(workflow / SPLIT)) < len(parts)
    assert {p: p.stat().st_mtime_ns for p in workflow.glob("outputs/*_LLAMA/*.gguf")} == others

    set_pair(workflow, "PRECISION: Q4_K_M\n")  # back to one file: the folder is no longer a target
    run = snakemake(workflow)
    assert run.jobs() == {"quantize": 1, "validate": 1, "checksum": 1, "plot": 1, **SPEED}, run.output
    assert (workflow / f"{SINGLE}.sha256").read_text().endswith("  tiny-gpt2-Q4_K_M.gguf\n")


def test_the_folder_of_an_unsplit_pair_is_no_target(workflow):
    run = snakemake(workflow, "-n", SPLIT, check=False)
    assert run.returncode != 0
    assert (f"{SPLIT}/: pair {PAIR} is not split (its YAML sets no SPLIT_MAX_SIZE or SPLIT_MAX_TENSORS); its output "
            f"is {SINGLE}") in run.output


def check_pair(fields: str) -> str:
    """The error that the workflow's start-up checks (schema, then pipeline.check_pair) give a pair YAML."""
    import pipeline
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    data = yaml.safe_load(fields)
    try:
        validate(data, str(ROOT / "rules/schemas/pair.schema.yaml"), set_default=True)
        pipeline.check_pair(data, Path(YAML))
    except (WorkflowError, pipeline.ConfigError) as e:
        return str(e)
    raise AssertionError(f"accepted: {fields!r}")


@pytest.mark.parametrize("fields, message", [
    ("SPLIT_MAX_SIZE: 500m", "'500m' does not match"),
    ("SPLIT_MAX_SIZE: 1.5G", "'1.5G' does not match"),
    ("SPLIT_MAX_SIZE: 0M", "'0M' does not match"),
    ("SPLIT_MAX_SIZE: 500", "500 is not of type 'string'"),
    ("SPLIT_MAX_TENSORS: 0", "0 is less than the minimum of 1"),
    ("SPLIT_MAX_SIZE: 2G\nSPLIT_MAX_TENSORS: 10", f"{YAML}: SPLIT_MAX_SIZE and SPLIT_MAX_TENSORS are both set; keep one"),
])
def test_bad_split_settings_are_refused(fields, message):
    assert message in check_pair(f"PRECISION: Q4_K_M\n{fields}\n")


def test_a_bad_split_size_stops_the_workflow_naming_the_file(workflow):
    set_pair(workflow, "PRECISION: Q4_K_M\nSPLIT_MAX_SIZE: 2GB\n")
    run = snakemake(workflow, "-n", check=False)
    assert run.returncode != 0 and f"{YAML} is invalid" in run.output and "'2GB' does not match" in run.output
    assert "e.g. 500M or 2G" in run.output  # the field's description, from the schema


def test_cecaiserve_target_of_a_split_pair_is_its_folder(tmp_path):
    import pipeline

    wf = copy_workflow(tmp_path / "Converter")
    assert pipeline.pair_targets(wf, PAIR) == [SINGLE]
    set_pair(wf, "PRECISION: Q4_K_M\nSPLIT_MAX_SIZE: 2G\n")
    assert pipeline.pair_targets(wf, PAIR) == [SPLIT]


# --- further llama-quantize arguments ---------------------------------------------------------------------------------
def test_extra_arguments_reach_llama_quantize_and_rerun_only_that_pair(workflow):
    other = "outputs/ARM_LLM_LLAMA/tiny-gpt2-Q4_0.gguf"
    assert snakemake(workflow, SINGLE, other).jobs() == {"llama_cpp": 1, "convert": 1, "quantize": 2}
    before = (workflow / other).stat().st_mtime_ns
    set_pair(workflow, "PRECISION: Q4_K_M\nEXTRA_QUANTIZE_ARGS:\n  - --override-kv=general.license=str:mit\n"
                       "  - --prune-layers 1\n")
    run = snakemake(workflow, SINGLE, other)
    assert run.jobs() == {"quantize": 1}, run.output
    tensors, kv = contents([workflow / SINGLE])
    assert kv["general.license"] == "mit" and kv["gpt2.block_count"] == 1
    assert any(n.startswith("blk.0.") for n in tensors) and not any(n.startswith("blk.1.") for n in tensors)
    assert np.isfinite(logits(workflow / SINGLE)).all()  # llama.cpp runs the pruned model
    set_pair(workflow, "PRECISION: Q4_K_M\nEXTRA_QUANTIZE_ARGS: [--override-kv=general.license=str:mit]\n")
    assert snakemake(workflow, SINGLE, other).jobs() == {"quantize": 1}
    assert contents([workflow / SINGLE])[1]["gpt2.block_count"] == 2
    assert (workflow / other).stat().st_mtime_ns == before
    # the same options written the other way are the same parameters: nothing to do
    set_pair(workflow, "PRECISION: Q4_K_M\nEXTRA_QUANTIZE_ARGS: ['--override-kv general.license=str:mit']\n")
    assert snakemake(workflow, SINGLE, other).jobs() == {}


@pytest.mark.parametrize("item, message", [
    ("--allow-requantize", "'--allow-requantize' is refused: the workflow quantizes only from the model's "
                           "full-precision intermediate"),
    ("--keep-split", "set SPLIT_MAX_SIZE to split the output instead"),
    ("--imatrix=/tmp/other.dat", "set IMATRIX: true instead"),
    ("--tensor-type-file=/etc/passwd", "list the overrides in the field TENSOR_TYPES instead"),
    ("--pure", "use PURE: true instead"),
    ("--dry-run", "it writes no GGUF"),
    ("--frobnicate", "'--frobnicate' is not a llama-quantize option the workflow passes on. Allowed, one per "
                     "list item: --prune-layers=10,11, --override-kv=general.license=str:mit"),
    ("; rm -rf ~", "is not a llama-quantize option the workflow passes on"),
    ("--prune-layers=1;reboot", "write --prune-layers=L0,L1,..., e.g. --prune-layers=10,11"),
    ("--prune-layers", "write --prune-layers=L0,L1,..., e.g. --prune-layers=10,11"),
    ("--override-kv=general.name=int:abc", "write --override-kv=KEY=TYPE:VALUE (TYPE int, float, bool or str"),
    ("--override-kv=general.name=str:a\nb", "write --override-kv=KEY=TYPE:VALUE"),
    ("--override-kv=hf2gguf.precision=str:F16", "the workflow writes the hf2gguf.* keys itself"),
])
def test_unknown_or_unsafe_extra_arguments_are_refused(item, message):
    error = check_pair("PRECISION: Q4_K_M\nEXTRA_QUANTIZE_ARGS:\n  - " + json.dumps(item) + "\n")
    assert error.startswith(f"{YAML}: field EXTRA_QUANTIZE_ARGS: ") and message in error, error


def test_allowed_extra_arguments_become_the_same_llama_quantize_arguments_however_written():
    import pipeline

    items = ["--prune-layers=10,11", "--override-kv general.name=str:My model", " --max-buffer-size 512 ",
             "--override-kv=tokenizer.ggml.add_bos_token=bool:false", "--exclude-weights=ffn_down"]
    args, _ = pipeline.quantize_options({"EXTRA_QUANTIZE_ARGS": items}, "Q4_K_M")
    assert args == ["--extra=--prune-layers=10,11", "--extra=--override-kv=general.name=str:My model",
                    "--extra=--max-buffer-size=512", "--extra=--override-kv=tokenizer.ggml.add_bos_token=bool:false",
                    "--extra=--exclude-weights=ffn_down"]


def test_a_refused_extra_argument_stops_the_workflow_naming_the_file(workflow):
    set_pair(workflow, "PRECISION: Q4_K_M\nEXTRA_QUANTIZE_ARGS: [--prune-layers=1, --allow-requantize]\n")
    run = snakemake(workflow, "-n", check=False)
    assert run.returncode != 0 and run.jobs() == {}
    assert (f"{YAML}: field EXTRA_QUANTIZE_ARGS: '--allow-requantize' is refused: the workflow quantizes only "
            "from the model's full-precision intermediate") in run.output


def test_include_and_exclude_weights_together_are_refused():
    error = check_pair("PRECISION: IQ2_XS\nEXTRA_QUANTIZE_ARGS: [--include-weights=attn, --exclude-weights=ffn]\n")
    assert "--include-weights and --exclude-weights cannot be used together" in error


def test_quantize_script_applies_the_same_allow_list(tmp_path):
    """Run by hand, scripts/quantize.py refuses what the pair YAML may not say."""
    script = copy_workflow(tmp_path / "wf") / "scripts/quantize.py"
    proc = subprocess.run([sys.executable, script, "in.gguf", "out.gguf", "Q4_K_M", "--llama-quantize", "x",
                           "--extra=--allow-requantize"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "'--allow-requantize' is refused" in proc.stderr
    assert not (tmp_path / "out.gguf").exists()


# --- no requantizing ------------------------------------------------------------------------------------------------
def test_an_already_quantized_intermediate_is_refused(workflow, llama_quantize):
    """A user who drops a quantized GGUF where the intermediate goes gets one clear error, not a requantized
    model (nor llama-quantize's own failure, which also leaves a partial file behind)."""
    intermediate = workflow / "outputs/intermediate/tiny-gpt2-F16.gguf"
    snakemake(workflow, str(intermediate.relative_to(workflow)))
    quantized = workflow / "q4_0.gguf"
    subprocess.run([llama_quantize, str(intermediate), str(quantized), "Q4_0"], check=True, capture_output=True)
    quantized.replace(intermediate)
    run = snakemake(workflow, SINGLE, check=False)
    assert run.returncode != 0 and run.jobs().get("convert") is None, run.output  # the user's file is used
    assert f"error: {intermediate.relative_to(workflow)} is already quantized (" in run.output
    assert "is Q4_0" in run.output and "never requantizes (llama-quantize --allow-requantize" in run.output
    assert not (workflow / SINGLE).exists() and not list(workflow.glob("outputs/**/.*tmp*"))

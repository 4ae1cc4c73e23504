"""CONVERTER: llama.cpp's own convert_hf_to_gguf.py as the workflow's fallback (README: "Choosing the converter").

Unit tests of the choice (scripts/pipeline.py) and of what is read from the pinned sdist; then the workflow end to
end on tiny random checkpoints of architectures our converter does not support (tests/fallback_models.py): each
goes through the default target, is quantized and validated, and its intermediate's logits in llama.cpp match
transformers'. With CONVERTER: llama.cpp, a model we support gives our tensors; switching converters reconverts
exactly that model; the converter's environment is built once per machine, never for supported models alone,
and an offline machine gets one clear error.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import yaml
from conftest import ROOT, copy_workflow, edit_yaml, snakemake

import llama_toolchain
import pipeline
import reference_converter
from pipeline import ConfigError

NAME = reference_converter.NAME  # "llama.cpp's convert_hf_to_gguf.py (b11312)"


# --- which converter: scripts/pipeline.py -------------------------------------------------------------------------
def model_with(tmp_path, *archs, text=None, name="m"):
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": list(archs)} | ({"text_config": {"architectures": [text]}} if text else {})
    (folder / "config.json").write_text(json.dumps(config))
    return str(tmp_path / "models"), name


THEIRS = ["Ernie4_5ForCausalLM", "FalconForCausalLM", "GPT2LMHeadModel", "LlamaForCausalLM", "OlmoForCausalLM"]


def theirs():
    return THEIRS


def must_not_be_read():
    raise AssertionError("llama.cpp's list was read although our converter applies")


def test_our_list_is_the_converters_registry():
    from hf2gguf.architectures import REGISTRY

    assert pipeline.our_architectures() == tuple(sorted(REGISTRY))


@pytest.mark.parametrize("setting", ["auto", "hf2gguf"])
def test_ours_where_it_applies_without_reading_llama_cpps_list(tmp_path, setting):
    assert pipeline.choose_converter(setting, *model_with(tmp_path, "LlamaForCausalLM"), must_not_be_read) == "hf2gguf"
    # any listed architecture that we support will do, as in our converter
    both = model_with(tmp_path, "LlamaModelX", "LlamaForCausalLM", name="two")
    assert pipeline.choose_converter(setting, *both, must_not_be_read) == "hf2gguf"


def test_auto_falls_back_to_llama_cpp(tmp_path):
    assert pipeline.choose_converter("auto", *model_with(tmp_path, "FalconForCausalLM"), theirs) == "llama.cpp"
    vision = model_with(tmp_path, "SomethingForConditionalGeneration", text="OlmoForCausalLM", name="vl")
    assert pipeline.choose_converter("auto", *vision, theirs) == "llama.cpp"


def test_llama_cpp_converts_every_model_it_knows(tmp_path):
    assert pipeline.choose_converter("llama.cpp", *model_with(tmp_path, "LlamaForCausalLM"), theirs) == "llama.cpp"
    with pytest.raises(ConfigError) as e:
        pipeline.choose_converter("llama.cpp", *model_with(tmp_path, "Qwen3ForCausalLM", name="q"), theirs)
    assert "CONVERTER is llama.cpp" in str(e.value) and "our converter does: set CONVERTER: auto" in str(e.value)


def test_hf2gguf_never_falls_back_and_says_that_auto_would(tmp_path):
    with pytest.raises(ConfigError) as e:
        pipeline.choose_converter("hf2gguf", *model_with(tmp_path, "FalconForCausalLM", name="falcon"), theirs)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}/models/falcon/config.json: architecture FalconForCausalLM is not supported")
    assert f"our converter supports {', '.join(pipeline.our_architectures())}" in msg
    assert "CONVERTER: auto (the default) would convert it with llama.cpp's convert_hf_to_gguf.py" in msg
    with pytest.raises(ConfigError) as e:
        pipeline.choose_converter("hf2gguf", *model_with(tmp_path, "MysteryForCausalLM", name="x"), theirs)
    assert "does not know it either" in str(e.value)


def test_an_architecture_neither_knows_lists_both_in_short(tmp_path):
    with pytest.raises(ConfigError) as e:
        pipeline.choose_converter("auto", *model_with(tmp_path, "FalconForCausalLMX", name="x"), theirs)
    msg = str(e.value)
    assert "models/x/config.json: architecture FalconForCausalLMX is supported neither by our converter nor" in msg
    assert f"our converter supports {', '.join(pipeline.our_architectures())}" in msg
    assert "llama.cpp's converts 5 architectures, the nearest: FalconForCausalLM" in msg
    assert "python scripts/reference_converter.py --architectures" in msg


def quantized(tmp_path, arch, method, name="q"):
    models, model = model_with(tmp_path, arch, name=name)
    path = Path(models) / model / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"quantization_config": {"quant_method": method}}))
    return models, model


def test_pre_quantized_weights_go_to_the_converter_that_reads_them(tmp_path):
    """DeepSeek-V3's FP8 release and gpt-oss's MXFP4 one are ours (tests/test_fp8.py, test_gptoss.py); a GPTQ
    release of an architecture of ours goes to llama.cpp's converter under auto, which dequantizes it."""
    for arch, method in (("DeepseekV3ForCausalLM", "fp8"), ("GptOssForCausalLM", "mxfp4")):
        release = quantized(tmp_path, arch, method, method)
        assert pipeline.choose_converter("auto", *release, must_not_be_read) == "hf2gguf"
        assert pipeline.choose_converter("hf2gguf", *release, must_not_be_read) == "hf2gguf"
    gptq = quantized(tmp_path, "LlamaForCausalLM", "gptq")
    assert pipeline.choose_converter("auto", *gptq, must_not_be_read) == "llama.cpp"
    assert pipeline.choose_converter("llama.cpp", *gptq, theirs=lambda: ["LlamaForCausalLM"]) == "llama.cpp"
    with pytest.raises(ConfigError) as e:
        pipeline.choose_converter("hf2gguf", *gptq, theirs)
    assert str(e.value).startswith(f"{tmp_path}/models/q/config.json: its weights are pre-quantized (gptq, "
                                   "quantization_config), which our converter does not read, and CONVERTER is hf2gguf")
    assert "CONVERTER: auto (the default) converts it with llama.cpp's convert_hf_to_gguf.py" in str(e.value)
    with pytest.raises(ConfigError, match=r"models/a/config.json: its weights are pre-quantized \(awq, quantization_"
                                          r"config\), which neither our converter nor llama.cpp's"):
        pipeline.choose_converter("auto", *quantized(tmp_path, "LlamaForCausalLM", "awq", "a"), theirs)


def test_their_dequantizing_methods_are_those_of_the_pinned_sdist():
    """THEIR_QUANT_METHODS is what b11312's dequant_model (and MXFP4 handling) compares quant_method with."""
    source = (llama_toolchain.extract_source(llama_toolchain.cache_root()) / "conversion" / "base.py").read_text()
    assert set(re.findall(r'quant_method == "([\w-]+)"', source)) == set(pipeline.THEIR_QUANT_METHODS)


def test_a_config_without_architectures_is_named(tmp_path):
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"models/m/config.json: has no \"architectures\" list"):
        pipeline.choose_converter("auto", str(tmp_path / "models"), "m", theirs)


# --- what is read from the pinned sdist ---------------------------------------------------------------------------
def test_llama_cpps_list_is_what_its_converter_registers():
    names = reference_converter.architectures()
    src = llama_toolchain.extract_source(llama_toolchain.cache_root())
    registered = set()
    for path in (src / "conversion").glob("*.py"):  # independently of TEXT_MODEL_MAP: the decorators themselves
        for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", path.read_text()):
            registered |= set(re.findall(r'"([^"]+)"', args))
    assert len(names) > 200 and set(names) <= registered
    assert set(pipeline.our_architectures()) <= set(names)
    from fallback_models import FIXTURES

    assert {f.arch for f in FIXTURES.values()} <= set(names) - set(pipeline.our_architectures())


def requirements(path: Path) -> dict[str, str]:
    """name -> specifier of a pip requirements file, following -r."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            out |= requirements(path.parent / line[2:].strip())
        elif line and not line.startswith("-"):
            name = re.match(r"[A-Za-z0-9_.-]+", line).group(0)
            out[name.lower()] = line[len(name):].replace(" ", "")
    return out


def test_the_environment_is_the_sdists_requirements():
    src = llama_toolchain.extract_source(llama_toolchain.cache_root())
    theirs_ = requirements(src / "requirements" / "requirements-convert_hf_to_gguf.txt")
    ours = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower(): r for r in reference_converter.REQUIREMENTS}
    assert set(ours) == set(theirs_) - {"gguf"}  # gguf: the sdist's own gguf-py, never a release
    for name, requirement in ours.items():
        if name != "torch":  # 2.13.0, this project's torch, instead of the sdist's 2.11.0
            assert requirement == name + theirs_[name], name
    conda = yaml.safe_load((ROOT / "envs" / "reference-converter.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert tuple(pip) == reference_converter.REQUIREMENTS


# --- the workflow, end to end ----------------------------------------------------------------------------------------
def fallback_fixtures() -> dict[str, Path]:
    from fallback_models import ensure

    return ensure(["falcon", "ernie4_5", "olmo"])


def one_pair_workflow(dest: Path, models: dict[str, Path]) -> Path:
    """The workflow with the Q4_K_M pair only, F32 intermediates (compared with transformers' logits) and these
    model folders (without the recorded logits)."""
    wf = copy_workflow(dest)
    for pair in (wf / "configurations").iterdir():
        if pair.is_dir() and pair.name != "GPU_LLM_LLAMA":
            shutil.rmtree(pair)
    edit_yaml(wf / "configurations" / "converter_args.yaml", lambda d: d.update(INTERMEDIATE_TYPE="F32"))
    for name, folder in models.items():
        shutil.copytree(folder, wf / "models" / name, ignore=shutil.ignore_patterns("*.npz"))
    return wf


def set_converter(wf: Path, setting: str) -> None:
    edit_yaml(wf / "configurations" / "converter_args.yaml", lambda d: d.update(CONVERTER=setting))


def targets(*models):
    return [f"outputs/GPU_LLM_LLAMA/{m}-Q4_K_M{ext}" for m in models for ext in (".gguf", ".gguf.sha256", ".json")]


def kv(path: Path, key: str):
    field = gguf.GGUFReader(path).fields.get(key)
    return field.contents() if field else None


@pytest.fixture(scope="module")
def fallback(tmp_path_factory):
    """The three fallback fixtures, each through the default target (MODEL_NAME) with CONVERTER: auto."""
    fixtures = fallback_fixtures()
    wf = one_pair_workflow(tmp_path_factory.mktemp("fallback"), fixtures)
    runs = {name: snakemake(wf, "--config", f"MODEL_NAME={name}") for name in fixtures}
    return wf, fixtures, runs


@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.parametrize("name", ["falcon", "ernie4_5", "olmo"])
def test_each_fallback_architecture_goes_through_the_default_target(fallback, name):
    from test_logits import GELU_TOLERANCE, SILU_TOLERANCE, llama_cpp_logits
    from fallback_models import FIXTURES

    wf, fixtures, runs = fallback
    jobs = runs[name].jobs()
    assert {k: jobs[k] for k in ("convert", "quantize", "kld_base", "validate", "checksum")} == dict.fromkeys(
        ("convert", "quantize", "kld_base", "validate", "checksum"), 1), runs[name].output
    report = json.loads((wf / f"outputs/GPU_LLM_LLAMA/{name}-Q4_K_M.json").read_text())
    assert report["converter"] == NAME and report["loaded"] and report["kl_divergence"] > 0
    output = wf / f"outputs/GPU_LLM_LLAMA/{name}-Q4_K_M.gguf"
    assert kv(output, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert f"{name}-Q4_K_M.gguf: " in runs[name].output and f"converted by {NAME}" in runs[name].output
    assert NAME.replace("'", "&#x27;") in (wf / "outputs/report/validation.html").read_text()
    intermediate = wf / f"outputs/intermediate/{name}-F32.gguf"
    for path in (intermediate, wf / f"outputs/GPU_LLM_LLAMA/{name}-Q4_K_M.gguf"):
        assert kv(path, "hf2gguf.converter") == NAME and kv(path, "hf2gguf.source.sha256")
    log = (wf / f"outputs/logs/convert/{name}-F32.log").read_text()
    print(f"{name}: {re.search(r'wrote .* in .*', log).group(0)}")
    # within the memory the convert job declares on a cluster (rules/common.smk: 1024 MB + half the model)
    peak_mb = int(re.search(r"peak RSS (\d+) MiB", log).group(1)) * 2**20 / 1e6
    size_mb = sum(os.path.getsize(f) for f in pipeline.model_files(str(wf / "models"), name)) // 2**20
    assert peak_mb <= 1024 + size_mb // 2
    recorded = np.load(fixtures[name] / "reference_logits.npz")
    ids = recorded["input_ids"].tolist()
    diff = float(np.abs(llama_cpp_logits(intermediate, ids) - recorded["logits"]).max())
    tolerance = GELU_TOLERANCE if FIXTURES[name].gelu else SILU_TOLERANCE
    print(f"{name}: max |logit difference| against transformers {diff:.2e} (tolerance {tolerance:.0e})")
    assert diff <= tolerance


@pytest.mark.workflow
@pytest.mark.slow
def test_the_environment_is_recorded_once_per_workflow(fallback):
    wf, _, runs = fallback
    assert sum(r.jobs().get("reference_converter", 0) for r in runs.values()) == 1
    record = json.loads(next((wf / "outputs/toolchain").glob("reference-converter-*.json")).read_text())
    assert record["python"] == str(reference_converter.env_dir() / "bin" / "python") or \
        record["python"] == os.environ.get(reference_converter.ENV_VARIABLE)


@pytest.mark.workflow
@pytest.mark.slow
def test_switching_converters_reconverts_exactly_that_model_and_llama_cpp_gives_our_tensors(fallback):
    from reference import compare, ensure_models

    wf, _, _ = fallback
    shutil.copytree(ensure_models(["llama2"], log=lambda m: None)["llama2"], wf / "models/llama2",
                    ignore=shutil.ignore_patterns("*.npz"))
    intermediate = wf / "outputs/intermediate/llama2-F32.gguf"
    assert snakemake(wf, *targets("llama2", "falcon")).jobs()["convert"] == 1
    assert kv(intermediate, "hf2gguf.converter") is None
    ours = shutil.copy(intermediate, wf / "ours.gguf")

    set_converter(wf, "llama.cpp")
    run = snakemake(wf, *targets("llama2", "falcon"))
    assert run.jobs() == {"convert": 1, "quantize": 1, "kld_base": 1, "validate": 1, "checksum": 1}, run.output
    assert kv(intermediate, "hf2gguf.converter") == NAME
    c = compare(ours, intermediate)
    assert not c.tensors and c.same_order, c.report()
    assert kv(ours, "hf2gguf.source.sha256") == kv(intermediate, "hf2gguf.source.sha256")
    report = json.loads((wf / "outputs/GPU_LLM_LLAMA/llama2-Q4_K_M.json").read_text())
    assert report["converter"] == NAME

    assert snakemake(wf, *targets("llama2", "falcon")).jobs() == {}


@pytest.mark.workflow
@pytest.mark.slow
def test_a_second_fresh_clone_builds_nothing(fallback, tmp_path):
    """The environment is cached outside the clone: another clone's run only records where it is."""
    folder = reference_converter.env_dir()
    before = (folder / ".complete").stat().st_mtime_ns
    wf = one_pair_workflow(tmp_path / "clone", {"falcon": fallback[1]["falcon"]})
    run = snakemake(wf, "--config", "MODEL_NAME=falcon")
    assert run.jobs()["reference_converter"] == 1 and run.jobs()["convert"] == 1
    log = next((wf / "outputs/logs/toolchain").glob("reference-converter-*.log")).read_text()
    assert f"using the cached environment {folder}" in log and "building" not in log
    assert (folder / ".complete").stat().st_mtime_ns == before


def tools_only(cache: Path) -> dict:
    """An empty cache root for the workflow, with llama.cpp's tools from the real one (LLAMA_QUANTIZE: nothing
    built) and no reference converter environment anywhere it can see."""
    bindir = llama_toolchain.build(["llama-quantize", "llama-perplexity"])
    return {"HF2GGUF_CACHE": str(cache), "LLAMA_QUANTIZE": str(bindir / "llama-quantize"),
            reference_converter.ENV_VARIABLE: ""}


@pytest.mark.workflow
def test_supported_models_alone_never_create_the_environment(workflow, tmp_path):
    run = snakemake(workflow, env=tools_only(tmp_path / "cache"))
    assert run.jobs()["convert"] == 2 and "reference_converter" not in run.jobs()
    assert not (tmp_path / "cache" / "reference-converter").exists()
    assert "converted by hf2gguf" in run.output
    assert json.loads((workflow / "outputs/GPU_LLM_LLAMA/tiny-gpt2-Q4_K_M.json").read_text())["converter"] == "hf2gguf"


@pytest.mark.workflow
def test_an_offline_machine_gets_one_clear_error(tmp_path):
    """No package index (a closed port on 127.0.0.1), no pip cache, no local wheels: the environment cannot be
    built, the error says what to do, and nothing is left behind."""
    models = {"falcon": fallback_fixtures()["falcon"]}
    wf = one_pair_workflow(tmp_path / "wf", models)
    cache = tmp_path / "cache"
    cache.mkdir()
    real = llama_toolchain.cache_root()
    llama_toolchain.extract_source(real)
    for name in ("sdist", "src"):  # the sdist is there (llama.cpp's list needs it); the network is not
        (cache / name).symlink_to(real / name)
    (tmp_path / "no-wheels").mkdir()
    closed = "http://127.0.0.1:9/simple"
    env = tools_only(cache) | {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": closed, "PIP_EXTRA_INDEX_URL": closed,
                               "PIP_FIND_LINKS": str(tmp_path / "no-wheels"), "PIP_NO_CACHE_DIR": "1",
                               "PIP_RETRIES": "0", "PIP_TIMEOUT": "3"}
    run = snakemake(wf, "--config", "MODEL_NAME=falcon", check=False, env=env)
    assert run.returncode != 0
    assert "could not install llama.cpp's converter environment from the package index (no network?)" in run.output
    assert f"set {reference_converter.ENV_VARIABLE} to a Python that has torch==2.13.0" in run.output
    assert "envs/reference-converter.yaml" in run.output and "CONVERTER: hf2gguf" in run.output
    assert not list((cache / "reference-converter").glob("env-*"))
    assert not list((wf / "outputs").glob("intermediate/*")) and not list((wf / "outputs").glob("toolchain/ref*"))


# --- errors before any job runs, and the reference converter's own failure -----------------------------------------
def with_architecture(wf: Path, name: str, arch: str) -> None:
    folder = wf / "models" / name
    shutil.copytree(wf / "models/tiny-gpt2", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"architectures": [arch]}))


@pytest.mark.workflow
def test_an_architecture_neither_converter_knows_stops_the_workflow_before_any_job(workflow):
    with_architecture(workflow, "mystery", "MysteryForCausalLM")
    run = snakemake(workflow, "--config", "MODEL_NAME=mystery", check=False)
    assert run.returncode != 0 and not (workflow / "outputs" / "toolchain").exists()
    assert "models/mystery/config.json: architecture MysteryForCausalLM is supported neither by our converter " \
           "nor by llama.cpp's convert_hf_to_gguf.py" in run.output
    assert f"our converter supports {', '.join(pipeline.our_architectures())}" in run.output
    assert f"llama.cpp's converts {len(reference_converter.architectures())} architectures" in run.output


@pytest.mark.workflow
def test_hf2gguf_only_stops_an_unsupported_model_before_any_job_and_says_auto_would_convert_it(workflow):
    with_architecture(workflow, "falcon-like", "FalconForCausalLM")
    set_converter(workflow, "hf2gguf")
    run = snakemake(workflow, "--config", "MODEL_NAME=falcon-like", check=False)
    assert run.returncode != 0 and not (workflow / "outputs" / "toolchain").exists()
    assert "models/falcon-like/config.json: architecture FalconForCausalLM is not supported by our converter, " \
           "and CONVERTER is hf2gguf" in run.output
    assert "CONVERTER: auto (the default) would convert it with llama.cpp's convert_hf_to_gguf.py" in run.output


@pytest.mark.workflow
@pytest.mark.slow
def test_the_reference_converters_failure_shows_its_last_lines_and_its_log(workflow):
    """llama.cpp's converter cannot convert tiny-gpt2 (its h.N.attn.bias buffers, which ours drops)."""
    set_converter(workflow, "llama.cpp")
    run = snakemake(workflow, "outputs/intermediate/tiny-gpt2-F16.gguf", check=False)
    assert run.returncode != 0
    assert f"error: {NAME} failed on models/tiny-gpt2 (exit status 1). Its last lines:" in run.output
    assert "ValueError: Can not map tensor 'h.0.attn.bias'" in run.output
    assert "all of it is in outputs/logs/convert/tiny-gpt2-F16.log" in run.output
    assert not list(workflow.glob("outputs/intermediate/*")) and not list(workflow.glob("outputs/intermediate/.*"))

"""Software deployment without a cluster: the conda environments (envs/*.yaml), the container wiring
(profiles/apptainer, each pair's CONTAINER_IMAGE) and the per-pair cluster fields.

Neither conda channels nor Apptainer can be reached here, so stand-ins answer for them: a `conda` that only
reports its version and configuration (enough for Snakemake's dry-run), and an `apptainer` that records every
command Snakemake gives it and runs `exec` like a container would: a PATH of the image's own (the
llama.cpp tools and python3, as in ghcr.io/ggml-org/llama.cpp:full, whose python is python3 only) plus
apptainer's PREPEND_PATH, and nothing of the host's.
"""
from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DIRECT_PRECISIONS, ROOT, configured_pairs, pair_yamls, snakemake

pytestmark = pytest.mark.workflow

PAIRS = configured_pairs()  # {pair: PRECISION} of the tests' configuration (tests/configurations/)
DEFAULT_IMAGE = "docker://ghcr.io/ggml-org/llama.cpp:full"  # pair.schema.yaml's CONTAINER_IMAGE default
IMAGES = {pair: fields.get("CONTAINER_IMAGE", DEFAULT_IMAGE) for pair, fields in pair_yamls().items()}
# import name -> conda-forge / PyPI package name
PACKAGES = {"numpy": "numpy", "yaml": "pyyaml", "gguf": "gguf", "safetensors": "safetensors",
            "matplotlib": "matplotlib-base", "huggingface_hub": "huggingface_hub",
            "httpx2": "huggingface_hub"}  # huggingface_hub 2 depends on httpx2

FAKE_CONDA = """#!/bin/sh
case "$*" in
  "--version") echo "conda 24.7.1" ;;
  "info --json") echo '{"conda_prefix": "/nonexistent/conda", "platform": "linux-64", "envs_dirs": []}' ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "stand-in conda cannot: $*" >&2; exit 1 ;;
esac
"""

FAKE_APPTAINER = """#!{python}
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_APPTAINER_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args == ["--version"]:
    print("apptainer version 1.3.6")
elif args[0] == "pull":  # pull --name FILE URL, in the image folder: the "image" remembers its URL
    with open(args[args.index("--name") + 1], "w") as f:
        f.write(args[-1])
elif args[0] == "exec":  # exec [options] IMAGE SHELL -c COMMAND
    rest, env = args[1:], {{"HOME": "/root", "LANG": "C.UTF-8"}}
    path = [os.environ["FAKE_IMAGE_BIN"], "/usr/bin", "/bin"]
    while rest[0].startswith("-"):
        opt = rest.pop(0)
        if opt in ("--home", "--bind", "--pwd", "--env", "-B"):
            value = rest.pop(0)
            if opt == "--env" and value.startswith("PREPEND_PATH="):
                path.insert(0, value.split("=", 1)[1])
    image, shell, dash_c, command = rest
    env["PATH"] = ":".join(path)
    sys.exit(subprocess.run([shell, dash_c, command], env=env).returncode)
else:
    sys.exit(f"stand-in apptainer cannot: {{args}}")
"""


def stand_in(bin_dir: Path, name: str, text: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)


def env_packages(name: str) -> set[str]:
    spec = yaml.safe_load((ROOT / "envs" / name).read_text())
    found = set()
    for dep in spec["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            found.add(re.split(r"[ <>=!]", item, maxsplit=1)[0])
    return found


def third_party_imports(script: Path, seen: set[Path] | None = None) -> set[str]:
    """Top-level modules a script imports, following our own modules under scripts/ (optional imports inside
    try/except ImportError are left out)."""
    seen = seen if seen is not None else set()
    if script in seen:
        return set()
    seen.add(script)
    tree = ast.parse(script.read_text())
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            local = [ROOT / "scripts" / (name.replace(".", "/") + ".py"),
                     ROOT / "scripts" / name.replace(".", "/") / "__init__.py", ROOT / "scripts" / f"{top}.py"]
            local = [p for p in local if p.exists()]
            if local:
                for p in local:
                    found |= third_party_imports(p, seen)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def rules_with_envs() -> dict[str, tuple[str, list[str]]]:
    """rule name -> (its conda env file, the scripts/ files its command runs), read from rules/*.smk."""
    found = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=(?:rule|checkpoint) )", smk.read_text()):
            m = re.match(r"(?:rule|checkpoint) (\w+):", block)
            env = re.search(r'conda:\s*\n\s*"\.\./envs/([\w.-]+)"', block)
            if m and env:
                found[m.group(1)] = (env.group(1), re.findall(r'script\("([\w/]+\.py)"\)', block))
            # a rule whose env and script depend on the model's converter: by_converter(hf2gguf=..., llama_cpp=...)
            for key in ("hf2gguf", "llama_cpp") if m and "conda:\n        by_converter(" in block else ():
                env = re.search(rf'{key}="\.\./envs/([\w.-]+)"', block).group(1)
                name = m.group(1) if key == "hf2gguf" else f"{m.group(1)} ({key})"
                found[name] = (env, re.findall(rf'{key}=script\("([\w/]+\.py)"\)', block))
    return found


def test_each_rules_conda_env_provides_what_its_scripts_import():
    rules = rules_with_envs()
    assert {"convert", "quantize", "imatrix", "kld_base", "validate", "speed", "checksum", "plot", "llama_cpp"} <= set(rules)
    for rule, (env, scripts) in rules.items():
        packages = env_packages(env)
        assert "python" in packages, (rule, env)
        for script in scripts:
            for module in third_party_imports(ROOT / "scripts" / script):
                assert module in PACKAGES, f"{script} imports {module}: add it to PACKAGES and to envs/{env}"
                assert PACKAGES[module] in packages, f"rule {rule} runs {script}, which imports {module}; " \
                                                     f"envs/{env} lacks {PACKAGES[module]}"
    # The tools: conda-forge's llama.cpp where llama.cpp runs; the converter's env never has it.
    for rule in ("quantize", "imatrix", "kld_base", "validate", "speed"):
        assert "llama.cpp" in env_packages(rules[rule][0]), rule
    assert env_packages("converter.yaml") >= {"python", "numpy", "safetensors", "gguf", "pyyaml"}
    assert "llama.cpp" not in env_packages("converter.yaml")


def test_conda_dry_run_takes_the_tools_from_the_envs_and_builds_nothing(workflow, tmp_path):
    stand_in(tmp_path / "bin", "conda", FAKE_CONDA)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    run = snakemake(workflow, "-n", "-p", "--profile", "profiles/conda", env=env)
    assert "llama_cpp" not in run.jobs() and run.jobs()["quantize"] == 4, run.output[-3000:]
    for name in ("converter.yaml", "llama-cpp.yaml"):
        assert f"Conda environment envs/{name} will be created" in run.output
    commands = [line for line in run.output.splitlines() if "llama-" in line and "scripts/" in line
                or line.lstrip().startswith("envs/bin/")]
    assert commands and "outputs/toolchain" not in run.output, run.output[-3000:]
    assert "--llama-quantize envs/bin/llama-quantize" in run.output
    assert "--perplexity envs/bin/llama-perplexity" in run.output
    assert "--llama-bench envs/bin/llama-bench" in run.output
    lint = snakemake(workflow, "--lint", "--sdm", "conda", env=env)
    assert "Congratulations" in lint.output, lint.output[-3000:]


def test_without_conda_the_conda_profile_says_so(workflow, tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    run = snakemake(workflow, "-n", "--profile", "profiles/conda", env=env, check=False)
    assert run.returncode != 0 and "conda" in run.output.lower(), run.output[-2000:]


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    import llama_toolchain

    return llama_toolchain.build(["llama-quantize", "llama-perplexity", "llama-imatrix", "llama-bench"])


def test_apptainer_runs_each_pairs_tools_in_its_image(workflow, tmp_path, llama_bin):
    """A real run through the stand-in apptainer: every llama.cpp job in its pair's image, with --nv, and
    llama.cpp's tools taken from the image (nothing is built)."""
    image_bin = tmp_path / "image" / "bin"
    image_bin.mkdir(parents=True)
    for tool in ("llama-quantize", "llama-perplexity", "llama-imatrix", "llama-bench"):
        (image_bin / tool).symlink_to(llama_bin / tool)
    stand_in(image_bin, "python3", f'#!/bin/sh\nexec {sys.executable} "$@"\n')  # the image's (no `python`)
    log = tmp_path / "apptainer.log"
    stand_in(tmp_path / "bin", "apptainer", FAKE_APPTAINER.format(python=sys.executable))
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_APPTAINER_LOG": str(log),
           "FAKE_IMAGE_BIN": str(image_bin)}
    run = snakemake(workflow, "--profile", "profiles/apptainer", env=env)
    assert "llama_cpp" not in run.jobs() and not (workflow / "outputs" / "toolchain").exists()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    pulled = sorted(c[-1] for c in calls if c[0] == "pull")
    assert pulled == sorted({DEFAULT_IMAGE, *IMAGES.values()}), calls
    ran = []  # (image URL, command)
    for call in (c for c in calls if c[0] == "exec"):
        assert "--nv" in call and "PREPEND_PATH=envs/bin" in call, call
        image_file = Path(call[-4]) if Path(call[-4]).is_absolute() else workflow / call[-4]
        ran.append((image_file.read_text(), call[-1]))
    for pair, precision in PAIRS.items():
        output = f"outputs/{pair}/tiny-gpt2-{precision}"
        jobs = [(img, cmd) for img, cmd in ran if f"{output}.gguf " in cmd or f"{output}.json" in cmd]
        assert {img for img, _ in jobs} == {IMAGES[pair]}, (pair, jobs)
        assert any("scripts/validate.py" in cmd for _, cmd in jobs), (pair, jobs)
        assert any("scripts/speed.py" in cmd for _, cmd in jobs), (pair, jobs)  # the benchmark too
        report = json.loads((workflow / f"{output}.json").read_text())
        assert report["loaded"] and report["kl_divergence"] >= 0
    quantized = [cmd for _, cmd in ran if "--llama-quantize envs/bin/llama-quantize" in cmd]
    assert len(quantized) == sum(q not in DIRECT_PRECISIONS for q in PAIRS.values()), ran
    assert [img for img, cmd in ran if "kl-divergence-base" in cmd] == [DEFAULT_IMAGE]
    assert not any("scripts/convert.py" in cmd for _, cmd in ran)  # the converter runs outside containers


def test_pair_fields_become_the_validation_jobs_resources(workflow):
    gpu_yaml = workflow / "configurations/GPU_LLM_LLAMA/converter_args_gpu_llm_llama.yaml"
    with open(gpu_yaml, "a") as f:
        f.write("SLURM_PARTITION: gpu-a100\nSLURM_ACCOUNT: proj42\nSLURM_CONSTRAINT: a100\nGPU_MODEL: a100\n")
    run = snakemake(workflow, "-n", "outputs/GPU_LLM_LLAMA/tiny-gpt2-Q4_K_M.json",
                    "outputs/CPU_LLM_LLAMA/tiny-gpt2-Q8_0.json", env={"SBATCH_PARTITION": "cpu-default"})
    blocks = {m.group(1): m.group(0) for m in re.finditer(
        r"rule validate:.*?wildcards: pair=(\w+).*?resources: [^\n]*", run.output, re.S)}
    gpu, cpu = blocks["GPU_LLM_LLAMA"], blocks["CPU_LLM_LLAMA"]
    for resource in ("gpu=1", "gpu_model=a100", "slurm_partition=gpu-a100", "slurm_account=proj42",
                     "constraint=a100"):
        assert resource in gpu, gpu
    assert "slurm_partition=cpu-default" in cpu and "gpu" not in cpu.split("resources:")[1], cpu


@pytest.mark.parametrize("line, field", [("CONTAINER_IMAGE: ubuntu", "CONTAINER_IMAGE"),
                                          ("GPUS: -1", "GPUS"), ("SLURM_PARTITION: 'gpu; rm -rf /'", "SLURM_PARTITION")])
def test_bad_cluster_fields_are_refused_with_file_and_field(workflow, line, field):
    path = "configurations/CPU_LLM_LLAMA/converter_args_cpu_llm_llama.yaml"
    with open(workflow / path, "a") as f:
        f.write(line + "\n")
    run = snakemake(workflow, "-n", check=False)
    assert run.returncode != 0 and path in run.output and field in run.output, run.output[-2000:]

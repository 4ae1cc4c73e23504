"""Unit tests of the workflow logic in scripts/pipeline.py and scripts/quantize.py."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import make_gpt2

import pipeline
import quantize
from pipeline import ConfigError


@pytest.mark.parametrize("given,canonical", [("Q4_K_M", "Q4_K_M"), ("FP16", "F16"), ("F16", "F16"),
                                             ("IQ4_XS", "IQ4_XS"), ("TQ2_0", "TQ2_0"), ("BF16", "BF16")])
def test_valid_precisions(given, canonical):
    assert pipeline.canonical_precision(given) == canonical


def test_lower_case_precision_gets_a_hint():
    with pytest.raises(ConfigError, match="upper case: use 'Q4_K_M'"):
        pipeline.canonical_precision("q4_k_m", "x.yaml")


@pytest.mark.parametrize("bad", ["Q9", "F8", "", "Q4_K_M ", "COPY"])
def test_unknown_precision_lists_the_valid_ones(bad):
    with pytest.raises(ConfigError, match="Valid precisions: F32, F16, BF16, Q8_0, .*Q4_K_M.*FP16"):
        pipeline.canonical_precision(bad)


def test_quantize_options():
    assert pipeline.quantize_options({}, "Q4_K_M") == ([], False)
    assert pipeline.quantize_options({}, "IQ2_XS") == ([], True)  # required: made and used automatically
    assert pipeline.quantize_options({"IMATRIX": True}, "Q4_K_M") == ([], True)
    args, _ = pipeline.quantize_options({"OUTPUT_TENSOR_TYPE": "Q8_0", "TOKEN_EMBEDDING_TYPE": "F16",
                                         "TENSOR_TYPES": ["ffn_down=Q6_K"], "PURE": True}, "Q4_0")
    assert args == ["--output-tensor-type", "q8_0", "--token-embedding-type", "f16", "--tensor-type",
                    "ffn_down=q6_k", "--pure"]
    with pytest.raises(ConfigError, match="requires an importance matrix, but the pair sets IMATRIX: false"):
        pipeline.quantize_options({"IMATRIX": False}, "IQ1_S", "x.yaml")


def test_missing_model_folder_lists_the_existing_ones(tmp_path):
    models = tmp_path / "models"
    for m in ("gpt2", "llama"):
        (models / m).mkdir(parents=True)
    with pytest.raises(ConfigError, match="models/nope/: no such model folder.*Existing model folders: gpt2, llama"):
        pipeline.model_files(str(models), "nope")


def test_model_files_are_the_conversion_inputs(tmp_path):
    folder = make_gpt2(tmp_path / "m", shards=2)
    (folder / "README.md").write_text("x")
    names = [p.rsplit("/", 1)[1] for p in pipeline.model_files(str(tmp_path), "m")]
    assert "README.md" not in names and "config.json" in names and "model.safetensors.index.json" in names
    assert sum(n.endswith(".safetensors") for n in names) == 2


@pytest.mark.parametrize("dtype,expected", [("BF16", "BF16"), ("F16", "F16"), ("F32", "F16")])
def test_auto_intermediate_type(tmp_path, dtype, expected):
    make_gpt2(tmp_path / "m", dtype=dtype)
    assert pipeline.intermediate_type(str(tmp_path), "m") == expected
    assert pipeline.intermediate_type(str(tmp_path), "m", "F32") == "F32"


def test_pairs_and_frameworks(tmp_path):
    for p in ("GPU_LLM_LLAMA", "GPU_LLM_TRF", ".hidden"):
        (tmp_path / p).mkdir()
    assert pipeline.list_pairs(tmp_path) == ["GPU_LLM_LLAMA", "GPU_LLM_TRF"]
    assert pipeline.framework("AGX_ORIN_LLM_LLAMA") == "LLAMA"
    assert "Transformers loads the Hugging Face folder models/x/ directly" in \
        pipeline.direct_framework_message("GPU_LLM_TRF", "models", "x")
    assert pipeline.pair_yaml(tmp_path, "GPU_LLM_LLAMA").name == "converter_args_gpu_llm_llama.yaml"


@pytest.mark.parametrize("text,problem", [("PRECISION: [1", "not valid YAML"), ("- a\n- b", "must be a mapping")])
def test_bad_yaml_names_the_file(tmp_path, text, problem):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}: {problem}"):
        pipeline.load_yaml(path)


def test_quantize_failure_leaves_no_output(tmp_path):
    src = tmp_path / "in.gguf"
    src.write_bytes(b"not a gguf")
    tool = tmp_path / "fake-quantize"  # behaves like llama-quantize on bad input: partial file, exit 1
    tool.write_text("#!/bin/sh\nshift $(($# - 4))\necho partial > \"$2\"\nexit 1\n")
    tool.chmod(0o755)
    with pytest.raises(SystemExit, match="llama-quantize failed"):
        quantize.quantize(src, tmp_path / "out" / "o.gguf", "Q4_0", 1, str(tool))
    assert list((tmp_path / "out").iterdir()) == []


def test_direct_precision_is_copied(tmp_path):
    src = tmp_path / "in.gguf"
    src.write_bytes(b"GGUF...")
    quantize.quantize(src, tmp_path / "o.gguf", "F16")
    assert (tmp_path / "o.gguf").read_bytes() == b"GGUF..." and (tmp_path / "o.gguf").stat().st_ino != src.stat().st_ino


# --- the configuration files' schemas (pipeline.validate_config), against Snakemake's own validate ------------
SCHEMAS = Path(__file__).resolve().parent.parent / "rules" / "schemas"


@pytest.mark.parametrize("schema,data", [
    ("converter_args.schema.yaml", {"MODEL_NAME": "gpt2"}),
    ("converter_args.schema.yaml", {"MODEL_NAME": ["a", "b"], "VALIDATE": False, "HUB_MODELS": {"a": "o/a"}}),
    ("converter_args.schema.yaml", {"MODEL_NAME": 17}),
    ("converter_args.schema.yaml", {"MODEL_NAME": "../x"}),
    ("converter_args.schema.yaml", {}),
    ("pair.schema.yaml", {"PRECISION": "Q4_K_M"}),
    ("pair.schema.yaml", {"PRECISION": "AUTO", "MAX_KLD": 0.01, "MAX_FILE_SIZE": "2G"}),
    ("pair.schema.yaml", {"PRECISION": 4}),
    ("pair.schema.yaml", {"PRECISION": "Q4_0", "SPLIT_MAX_SIZE": "2GB"}),
    ("pair.schema.yaml", {"PRECISION": "Q4_0", "NO_SUCH_FIELD": 1}),
])
def test_the_same_verdict_and_defaults_as_snakemakes_validate(schema, data):
    """snakemake.utils.validate (the reference) and ours accept and refuse the same files and fill in the same
    defaults."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    theirs, ours = copy.deepcopy(data), copy.deepcopy(data)
    try:
        validate(theirs, str(SCHEMAS / schema), set_default=True)
        refused = None
    except WorkflowError as e:
        refused = str(e)
    if refused is None:
        assert pipeline.validate_config(ours, str(SCHEMAS / schema), "x.yaml") == theirs
        assert len(ours) > len(data)  # the defaults are in
    else:
        with pytest.raises(ConfigError, match=r"^x\.yaml is invalid: .*\(schema: .*\)") as e:
            pipeline.validate_config(ours, str(SCHEMAS / schema), "x.yaml")
        message = str(e.value).split(": ", 1)[1].rsplit(" (schema", 1)[0].split(": ", 1)[-1]
        assert message in refused, (message, refused)


def test_a_refusal_names_the_file_and_the_field_and_says_what_the_field_is():
    with pytest.raises(ConfigError, match=r"^c/P/p\.yaml is invalid: SPLIT_MAX_SIZE: '2GB' does not match") as e:
        pipeline.validate_config({"PRECISION": "Q4_0", "SPLIT_MAX_SIZE": "2GB"}, str(SCHEMAS / "pair.schema.yaml"),
                                 "c/P/p.yaml")
    assert "\nSPLIT_MAX_SIZE: Split the output into shards" in str(e.value)  # the field's description


# --- the model folder's fingerprint (what conversion depends on) ---------------------------------------------
def test_fingerprint_hashes_every_shard_and_then_only_what_changed(tmp_path):
    import hashlib
    import json
    import os

    folder = tmp_path / "models/m"
    folder.mkdir(parents=True)
    files = {"config.json": b"{}", "README.md": b"not read by conversion"}
    files.update({f"model-0000{i}-of-00003.safetensors": os.urandom(300_000 * i) for i in (1, 2, 3)})
    for name, data in files.items():
        (folder / name).write_bytes(data)
    out = pipeline.fingerprint(str(tmp_path / "models"), "m", str(tmp_path / "fp"))
    expected = {n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != "README.md"}
    assert json.loads(Path(out).read_text()) == {"model": "m", "files": expected}
    before = Path(out).stat().st_mtime_ns

    # same size, mtime and inode: taken from the cache, not read again (so the changed bytes go unseen)
    shard = folder / "model-00002-of-00003.safetensors"
    st = shard.stat()
    with open(shard, "r+b") as f:
        f.write(b"X")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    pipeline.fingerprint(str(tmp_path / "models"), "m", str(tmp_path / "fp"))
    assert json.loads(Path(out).read_text())["files"] == expected and Path(out).stat().st_mtime_ns == before

    # a new mtime with the same content (a fresh checkout) leaves the fingerprint as it was
    os.utime(folder / "model-00001-of-00003.safetensors")
    pipeline.fingerprint(str(tmp_path / "models"), "m", str(tmp_path / "fp"))
    assert Path(out).stat().st_mtime_ns == before

    # a new mtime on the changed shard: read again, and the fingerprint changes
    os.utime(shard)
    pipeline.fingerprint(str(tmp_path / "models"), "m", str(tmp_path / "fp"))
    assert json.loads(Path(out).read_text())["files"] == {
        **expected, shard.name: hashlib.sha256(shard.read_bytes()).hexdigest()}


# --- a direct precision's output: a kernel copy (a clone where the file system can) -----------------------
@pytest.mark.parametrize("kernel", ["copy_file_range", "refused"])
def test_copy_file(tmp_path, monkeypatch, kernel):
    import errno
    import os

    src = tmp_path / "in.gguf"
    src.write_bytes(os.urandom(3 * 2**20 + 17))
    if kernel == "refused":  # another file system on an old kernel: shutil's copy instead
        def refuse(*args):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    quantize.copy_file(src, tmp_path / "out.gguf")
    assert (tmp_path / "out.gguf").read_bytes() == src.read_bytes()
    assert (tmp_path / "out.gguf").stat().st_ino != src.stat().st_ino


def test_a_direct_precisions_copy_is_a_clone_where_the_file_system_shares_extents(tmp_path):
    """On Btrfs (an image mounted through a loop device) the output of a direct precision takes no space of its
    own, where shutil's copy doubles it. Needs root and btrfs-progs, which .ci/run installs."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("mkfs.btrfs"):
        assert not os.environ.get("CI"), "CI runs as root with btrfs-progs (.ci/run installs it)"
        pytest.skip("needs root and mkfs.btrfs")
    image, mnt = tmp_path / "btrfs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(512 * 2**20)
    subprocess.run(["mkfs.btrfs", "-q", image], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", image, mnt], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no loop device here: {mounted.stderr.strip()}")
    try:
        def used():
            os.sync()
            st = os.statvfs(mnt)
            return (st.f_blocks - st.f_bfree) * st.f_frsize

        (mnt / "in.gguf").write_bytes(os.urandom(64 * 2**20))
        before = used()
        quantize.copy_file(mnt / "in.gguf", mnt / "clone.gguf")
        cloned = used() - before
        shutil.copyfile(mnt / "in.gguf", mnt / "copy.gguf")
        copied = used() - before - cloned
        assert (mnt / "clone.gguf").read_bytes() == (mnt / "in.gguf").read_bytes()
        assert copied > 60 * 2**20 and cloned < 4 * 2**20, (cloned, copied)
    finally:
        subprocess.run(["umount", mnt], check=True)

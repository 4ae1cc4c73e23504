"""Bad input gets one clear error that names the file and the fix, and nothing partial is left behind.

Numbers refer to the cases of the robustness issue. Model-folder cases run the converter (what the convert rule
runs); configuration and run cases run Snakemake in a temporary copy of the workflow.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import TINY, make_gpt2, snakemake

import quantize
from hf2gguf.convert import convert
from hf2gguf.errors import ConversionError


def refused(folder: Path, tmp_path: Path, match: str, outtype="F16") -> str:
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(ConversionError, match=match) as e:
        convert(folder, out, outtype, log=lambda m: None)
    assert not out.parent.exists() or not any(out.parent.iterdir()), "a partial output was left"
    assert "fix:" in str(e.value)
    return str(e.value)


@pytest.fixture
def model(tmp_path) -> Path:
    return make_gpt2(tmp_path / "m")


def header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n])


def rewrite_header(path: Path, new_header: dict) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    text = json.dumps(new_header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


# --- 1-4: configuration --------------------------------------------------------------------------------------------
CONFIG = "configurations/converter_args.yaml"


def failing(wf, *args) -> str:
    run = snakemake(wf, *args, check=False)
    assert run.returncode != 0
    assert not (wf / "outputs").exists() or not list((wf / "outputs").rglob("*.gguf"))
    return run.output


def set_model_name(wf, line):
    """Puts line (YAML text) in place of the MODEL_NAME line."""
    cfg = wf / CONFIG
    text, n = re.subn(r"(?m)^MODEL_NAME:.*$", line, cfg.read_text())
    assert n == 1
    cfg.write_text(text)


@pytest.mark.parametrize("line,problem", [
    ("", "'MODEL_NAME' is a required property"),  # 1: missing
    ("MODEL_NAME: ''", "MODEL_NAME"),  # 1: empty
    ("MODEL_NAME: 17", "17 is not of type 'string'"),
    ("MODEL_NAME: ../secrets", "does not match"),  # 2: traversal
    ("MODEL_NAME: /etc/passwd", "does not match"),  # 2: absolute
    ("MODEL_NAME: a/b", "does not match"),  # 2: slash
])
def test_bad_model_name_is_refused_by_the_schema(workflow, line, problem):
    set_model_name(workflow, line)
    out = failing(workflow, "-n")
    assert f"{CONFIG} is invalid" in out and problem in out


@pytest.mark.parametrize("target", ["outputs/GPU_LLM_LLAMA/../../../escape-F16.gguf", "/tmp/escape-F16.gguf",
                                    "outputs/GPU_LLM_LLAMA/..-F16.gguf", "outputs/GPU_LLM_LLAMA/x/y-F16.gguf"])
def test_targets_outside_the_outputs_are_refused(workflow, target):  # 2
    out = failing(workflow, "-n", target)
    assert "No rule to produce" in out
    assert not Path("/tmp/escape-F16.gguf").exists()


@pytest.mark.parametrize("text,problem", [
    ("PRECISION: [Q4_0", "not valid YAML"),
    ("PRECISION: 4", "4 is not of type 'string'"),
    ("PRECISION: Q4_0\nPRECISON: Q8_0", "Additional properties are not allowed ('PRECISON' was unexpected)"),
    ("", "'PRECISION' is a required property"),
])
def test_bad_pair_yaml(workflow, text, problem):  # 4
    path = "configurations/ARM_LLM_LLAMA/converter_args_arm_llm_llama.yaml"
    (workflow / path).write_text(text)
    out = failing(workflow, "-n")
    assert path in out and problem in out


def test_fp16_is_accepted_as_f16(workflow):  # 3
    run = snakemake(workflow, "outputs/CPU_LLM_LLAMA/tiny-gpt2-FP16.gguf")
    reader = gguf.GGUFReader(workflow / "outputs/CPU_LLM_LLAMA/tiny-gpt2-FP16.gguf")
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16, run.output


# --- 5-12: model folders -------------------------------------------------------------------------------------------
def test_no_config_json(model, tmp_path):  # 5
    (model / "config.json").unlink()
    refused(model, tmp_path, r"config.json: is missing")


def test_config_json_is_not_json(model, tmp_path):  # 5
    (model / "config.json").write_text("{'n_embd': 64,")
    refused(model, tmp_path, r"config.json: is not valid JSON")


def test_config_json_without_architectures(tmp_path):  # 5
    model = make_gpt2(tmp_path / "m", drop_config=("architectures",))
    refused(model, tmp_path, r"config.json: has no 'architectures' list")


def test_unsupported_architecture(tmp_path):  # 5
    model = make_gpt2(tmp_path / "m", config_extra={"architectures": ["BertModel"]})
    message = refused(model, tmp_path, "BertModel is not supported")
    assert "supported architectures: " in message and "GPT2LMHeadModel, " in message


def test_no_weights(model, tmp_path):  # 6
    (model / "model.safetensors").unlink()
    refused(model, tmp_path, r"has no weights \(\*.safetensors\)")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt", "pytorch_model-00001-of-00002.bin"])
def test_only_pickle_weights_are_refused_unread(model, tmp_path, name):  # 7
    (model / "model.safetensors").unlink()
    bomb = model / name  # a pickle that would run code if it were ever unpickled
    bomb.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    msg = refused(model, tmp_path, "only pickle weights")
    assert name in msg and "safetensors" in msg and "arbitrary code" in msg
    assert not (tmp_path / "pwned").exists()


def test_truncated_mid_tensor(model, tmp_path):  # 8
    raw = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(raw[: len(raw) - 1000])
    refused(model, tmp_path, r"model.safetensors: is not a valid safetensors file")


def test_corrupt_header(model, tmp_path):  # 8
    path = model / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[8:40] = b"#" * 32
    path.write_bytes(bytes(raw))
    refused(model, tmp_path, r"model.safetensors: is not a valid safetensors file")


def test_oversized_header(model, tmp_path):  # 8
    path = model / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes((2**40).to_bytes(8, "little") + raw[8:])
    refused(model, tmp_path, r"model.safetensors: is not a valid safetensors file")


@pytest.mark.parametrize("shift", ["overlap", "past_end"])
def test_bad_offsets(model, tmp_path, shift):  # 8
    path = model / "model.safetensors"
    _, h = header(path)
    name = "h.1.ln_2.weight"
    start, end = h[name]["data_offsets"]
    h[name]["data_offsets"] = [start - 2, end - 2] if shift == "overlap" else [start, end + 4096]
    rewrite_header(path, h)
    refused(model, tmp_path, r"model.safetensors: is not a valid safetensors file")


def test_int8_weights_are_refused(tmp_path):  # 8
    model = make_gpt2(tmp_path / "m")
    path = model / "model.safetensors"
    _, h = header(path)
    for t in h.values():
        if isinstance(t, dict) and t.get("dtype") == "F16" and t["shape"] == [1024, 64]:  # wte
            t["dtype"], t["shape"] = "I8", [1024, 128]  # same bytes, now int8
    rewrite_header(path, h)
    msg = refused(model, tmp_path, "dtype I8")
    assert "pre-quantized" in msg


def test_index_names_a_missing_shard(tmp_path):  # 9
    model = make_gpt2(tmp_path / "m", shards=2)
    (model / "model-00002-of-00002.safetensors").unlink()
    refused(model, tmp_path, r"model-00002-of-00002.safetensors: is named in model.safetensors.index.json but missing")


def test_index_names_a_tensor_missing_from_its_shard(tmp_path):  # 9
    model = make_gpt2(tmp_path / "m", shards=2)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    index["weight_map"]["h.9.mlp.c_fc.weight"] = "model-00001-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(model, tmp_path, r"model-00001-of-00002.safetensors: lacks tensor 'h.9.mlp.c_fc.weight'")


def test_index_cannot_point_outside_the_folder(tmp_path):  # 9, 2
    model = make_gpt2(tmp_path / "m", shards=2)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    index["weight_map"]["wte.weight"] = "../../elsewhere.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(model, tmp_path, r"index.json: names '../../elsewhere.safetensors' as a shard")


@pytest.mark.parametrize("change,problem", [
    ({"n_embd": 48}, r"wte.weight has shape \[1024, 64\], but config.json implies \[1024, 48\]"),  # hidden size
    ({"n_layer": 3}, r"lacks tensor blk.2.attn_norm.weight"),  # layers
    ({"n_layer": 1}, r"beyond the 1 blocks that config.json declares"),
    ({"n_head": 3}, r"n_embd 64 is not a multiple of n_head 3"),  # heads
    ({"vocab_size": 2048}, r"says vocab_size 2048, but the token embedding \(wte.weight\) has 1024 rows"),
])
def test_shapes_that_disagree_with_config_json(model, tmp_path, change, problem):  # 10
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | change))
    refused(model, tmp_path, problem)


def test_vocabulary_larger_than_the_embedding(tmp_path):  # 11
    model = make_gpt2(tmp_path / "m", vocab_rows=512)
    refused(model, tmp_path, r"the tokenizer has ids up to 999, but the embedding has only 512 rows")


def test_missing_tokenizer(model, tmp_path):  # 11
    for f in ("tokenizer.json", "vocab.json", "merges.txt"):
        (model / f).unlink()
    refused(model, tmp_path, r"has no tokenizer \(tokenizer.json, or vocab.json with merges.txt\)")


def test_tokenizer_json_is_not_json(model, tmp_path):  # 11
    (model / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0')
    refused(model, tmp_path, r"tokenizer.json: is not valid JSON")


def test_symlinks_outside_the_folder_are_followed_read_only(tmp_path):  # 12 (documented in README.md)
    store = make_gpt2(tmp_path / "blobs")  # like the Hugging Face cache: snapshot files link into blobs/
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    for f in store.iterdir():
        (model / f.name).symlink_to(f)
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in store.iterdir()}
    out = convert(model, tmp_path / "o.gguf", "F16", log=lambda m: None)
    assert len(gguf.GGUFReader(out).tensors) == 28
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in store.iterdir()} == before


# --- 13-17: the run itself ------------------------------------------------------------------------------------------
def test_disk_full(tmp_path, monkeypatch):  # 14
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk], capture_output=True).returncode == 0
    if not mounted:  # not root: make the writer hit ENOSPC the way a full disk would
        def full(self, *a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    try:
        with pytest.raises(ConversionError, match=r"(?s)the disk is full .*while writing tiny.gguf; nothing was left behind.*OUTPUTS_DIR"):
            convert(TINY, disk / "out" / "tiny.gguf", "F16", log=lambda m: None)  # 3.8 MB into 1 MB
        assert list((disk / "out").iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", disk], check=True)


def test_k_quant_fallback_is_reported(tmp_path, llama_quantize, capfd):  # 17
    f16 = convert(make_gpt2(tmp_path / "m", n_embd=64, n_head=2), tmp_path / "f16.gguf", "F16", log=lambda m: None)
    quantize.quantize(f16, tmp_path / "q.gguf", "Q4_K_M", 2, llama_quantize)
    err = capfd.readouterr().err
    assert "tensor(s) have rows that do not fit Q4_K_M's blocks" in err
    assert "blk.0.ffn_up.weight - ncols 64 not divisible by 256" in err
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q5_0


def test_failing_llama_quantize_reaches_the_log_and_the_error(workflow):  # 16
    snakemake(workflow, "outputs/GPU_LLM_LLAMA/tiny-gpt2-Q4_K_M.gguf")
    intermediate = workflow / "outputs/intermediate/tiny-gpt2-F16.gguf"
    intermediate.write_bytes(b"GGUF" + b"\xff" * 4096)  # damaged after the fact
    run = snakemake(workflow, "outputs/GPU_LLM_LLAMA/tiny-gpt2-Q5_K_M.gguf", check=False)
    assert run.returncode != 0
    log = (workflow / "outputs/logs/quantize/GPU_LLM_LLAMA/tiny-gpt2-Q5_K_M.log").read_text()
    for text in (log, run.output):
        assert "llama-quantize failed (exit code 1)" in text
        assert "gguf_init_from_file" in text or "failed to" in text  # llama.cpp's own words
    assert list((workflow / "outputs/GPU_LLM_LLAMA").iterdir()) == [workflow / "outputs/GPU_LLM_LLAMA/tiny-gpt2-Q4_K_M.gguf"]


# --- interruption and concurrency, on a model large enough to catch mid-write ------------------------------------
def descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start(wf, *args):
    return subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=wf,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def signal_mid_write(proc, folder: Path, process_name: str, sig: int) -> tuple[Path, list[int]]:
    """Waits until a temporary output has data, then sends sig to the processes that write it; returns the
    temporary file and those processes."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        temps = [p for p in folder.glob(".*.tmp-*") if p.stat().st_size > 0] if folder.exists() else []
        if temps:
            victims = [p for p in descendants(proc.pid) if process_name in cmdline(p)]
            if victims:
                for v in victims:
                    os.kill(v, sig)
                return temps[0], victims
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"never saw {process_name} writing in {folder}")


def kill_mid_write(proc, folder: Path, process_name: str) -> Path:
    """kill -9 of the process writing a temporary output, once it has data; returns the temporary file."""
    return signal_mid_write(proc, folder, process_name, signal.SIGKILL)[0]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    from conftest import copy_workflow

    wf = copy_workflow(tmp_path_factory.mktemp("big") / "wf")
    make_gpt2(wf / "models/big", n_embd=1024, n_layer=6, n_head=8, n_positions=1024, dtype="F32")
    return wf


def test_kill_9_of_the_converter_leaves_no_gguf_and_the_next_run_completes(big):  # 13
    target = "outputs/intermediate/big-F16.gguf"
    proc = start(big, target)
    temp = kill_mid_write(proc, big / "outputs/intermediate", "convert.py")
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert not (big / target).exists()
    partial = hashlib.sha256(temp.read_bytes()).hexdigest()
    run = snakemake(big, target)
    assert run.jobs() == {"convert": 1}
    assert hashlib.sha256((big / target).read_bytes()).hexdigest() != partial  # really killed mid-write
    assert len(gguf.GGUFReader(big / target).tensors) == 76
    assert not list((big / "outputs/intermediate").glob(".*.tmp-*"))


def test_kill_9_of_llama_quantize_and_a_second_concurrent_run(big):  # 13, 15
    target = "outputs/GPU_LLM_LLAMA/big-Q4_K_M.gguf"
    snakemake(big, "outputs/intermediate/big-F16.gguf")
    proc = start(big, target)
    folder = big / "outputs/GPU_LLM_LLAMA"
    # llama-quantize is paused mid-write, so the first run surely still holds its lock (a tiny model can finish
    # before a second Snakemake has started)
    _, writers = signal_mid_write(proc, folder, "llama-quantize", signal.SIGSTOP)
    second = snakemake(big, target, check=False)  # 15: the same tree, while the first run works
    assert second.returncode != 0 and "Directory cannot be locked" in second.output
    for pid in writers:
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Error in rule quantize" in out
    assert not (big / target).exists()
    run = snakemake(big, "--rerun-incomplete", target)
    assert run.jobs() == {"quantize": 1}
    reader = gguf.GGUFReader(big / target)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert not list(folder.glob(".*.tmp-*"))
    np.testing.assert_equal(len(reader.tensors), 76)

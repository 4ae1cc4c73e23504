"""Fetching a missing model folder from the Hub, against a stand-in Hub server on 127.0.0.1 (tests/hub_server.py)."""
from __future__ import annotations

import json
import socket
import time

import gguf
import pytest
from conftest import ROOT, edit_yaml, snakemake
from hub_server import Hub

TINY = {p.name: p.read_bytes() for p in (ROOT / "models/tiny-gpt2").iterdir() if p.name != "README.md"}
HUB_MODELS = {"hubtiny": "test-org/tiny-gpt2", "pinned": {"repo": "test-org/tiny-gpt2", "revision": "v1"},
              "gated": "test-org/gated", "pickled": "test-org/pickled", "dropped": "test-org/dropped",
              "tiny-gpt2": "test-org/tiny-gpt2"}


@pytest.fixture
def hub():
    h = Hub()
    h.add("test-org/tiny-gpt2", TINY)
    v1 = dict(TINY, **{"config.json": TINY["config.json"].replace(b'"layer_norm_epsilon": 1e-05',
                                                                   b'"layer_norm_epsilon": 1e-06')})
    h.v1 = h.add("test-org/tiny-gpt2", v1, tag="v1")
    h.add("test-org/gated", TINY, gated=True)
    h.add("test-org/pickled", {"config.json": TINY["config.json"], "pytorch_model.bin": b"\x80\x04pickle"})
    h.add("test-org/dropped", TINY, drop="model.safetensors")
    yield h
    h.close()


@pytest.fixture
def wf(workflow, hub, tmp_path):
    edit_yaml(workflow / "configurations/converter_args.yaml", lambda d: d.update(HUB_MODELS=HUB_MODELS))
    return workflow


def env(hub_url, tmp_path, **extra):
    return {"HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_TOKEN": "", **extra}


def test_a_missing_model_is_downloaded_then_converted(wf, hub, tmp_path):
    target = "outputs/GPU_LLM_LLAMA/hubtiny-Q4_K_M.gguf"
    run = snakemake(wf, target, env=env(hub.url, tmp_path))
    assert run.jobs() == {"download": 1, "llama_cpp": 1, "convert": 1, "quantize": 1}, run.output
    folder = wf / "models/hubtiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*TINY, ".hf2gguf-source.json"])
    source = json.loads((folder / ".hf2gguf-source.json").read_text())
    assert source["repo"] == "test-org/tiny-gpt2" and source["commit"] == hub.resolve(hub.repos["test-org/tiny-gpt2"], "main")
    assert (folder / "model.safetensors").read_bytes() == TINY["model.safetensors"]
    fields = gguf.GGUFReader(wf / target).fields
    assert fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert fields["hf2gguf.source.repo"].contents() == "test-org/tiny-gpt2"
    assert fields["hf2gguf.source.commit"].contents() == source["commit"]
    assert not list((wf / "models").glob(".*download*"))
    n = len(hub.requests)
    assert snakemake(wf, target, env=env(hub.url, tmp_path)).jobs() == {}
    assert len(hub.requests) == n  # nothing asked of the Hub again


def test_a_revision_pin(wf, hub, tmp_path):
    target = "outputs/CPU_LLM_LLAMA/pinned-Q8_0.gguf"
    snakemake(wf, target, env=env(hub.url, tmp_path))
    source = json.loads((wf / "models/pinned/.hf2gguf-source.json").read_text())
    assert source["revision"] == "v1" and source["commit"] == hub.v1
    eps = gguf.GGUFReader(wf / target).fields["gpt2.attention.layer_norm_epsilon"].contents()
    assert eps == pytest.approx(1e-6)


def failing(wf, target, environment) -> str:
    run = snakemake(wf, target, check=False, env=environment)
    assert run.returncode != 0
    model = target.split("/")[-1].rsplit("-", 1)[0]
    folder = wf / "models" / model
    assert not folder.exists() or not any(folder.iterdir()), "a folder that looks complete was left"
    assert not list((wf / "models").glob(".*download*"))
    assert not list((wf / "outputs").rglob(f"{model}-*.gguf")) if (wf / "outputs").exists() else True
    return run.output


def test_a_gated_repo_asks_for_hf_token(wf, hub, tmp_path):
    out = failing(wf, "outputs/GPU_LLM_LLAMA/gated-Q4_K_M.gguf", env(hub.url, tmp_path))
    assert "test-org/gated is gated, private or missing" in out and "HF_TOKEN" in out and "HTTP 401" in out


def test_an_unreachable_hub_fails_fast_with_what_to_place_where(wf, tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    out = failing(wf, "outputs/GPU_LLM_LLAMA/hubtiny-Q4_K_M.gguf", env(f"http://127.0.0.1:{port}", tmp_path))
    assert time.monotonic() - start < 30
    assert "cannot reach http://127.0.0.1" in out and "place the model's files in models/hubtiny/ by hand" in out


def test_offline_mode(wf, hub, tmp_path):
    out = failing(wf, "outputs/GPU_LLM_LLAMA/hubtiny-Q4_K_M.gguf", env(hub.url, tmp_path, HF_HUB_OFFLINE="1"))
    assert "HF_HUB_OFFLINE is set" in out and "models/hubtiny/ by hand" in out


def test_a_connection_dropped_mid_file_leaves_no_folder(wf, hub, tmp_path):
    out = failing(wf, "outputs/GPU_LLM_LLAMA/dropped-Q4_K_M.gguf", env(hub.url, tmp_path))
    assert "downloading test-org/dropped" in out and "error:" in out


def test_pickle_only_repos_are_refused(wf, hub, tmp_path):
    out = failing(wf, "outputs/GPU_LLM_LLAMA/pickled-Q4_K_M.gguf", env(hub.url, tmp_path))
    assert "only pickle files (pytorch_model.bin)" in out
    assert not any("resolve" in r for r in hub.requests if "pickled" in r)  # nothing was downloaded


def test_a_folder_placed_by_hand_is_never_downloaded(wf, hub, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in (wf / "models/tiny-gpt2").iterdir()}
    run = snakemake(wf, "outputs/GPU_LLM_LLAMA/tiny-gpt2-Q4_K_M.gguf", env=env(hub.url, tmp_path))
    assert "download" not in run.jobs()
    assert not any("tiny-gpt2" in r for r in hub.requests)
    assert {p.name: p.stat().st_mtime_ns for p in (wf / "models/tiny-gpt2").iterdir()} == before

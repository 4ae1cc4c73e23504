"""Publishing validated outputs to a Hub repository (rules/publish.smk, scripts/hub_publish.py), against the stand-in
Hub of tests/hub_server.py. The outputs are built once per module; each test publishes a copy of them to a fresh Hub,
and checks what the Hub holds against the files on disk, hashed here."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, configured_pairs, copy_workflow, edit_yaml, snakemake
from hub_server import Hub

import hub_publish
from hub_publish import Local, PairOutput, PublishError, Remote

MODEL = "tiny-gpt2"
REPO = "test-org/tiny-gpt2-GGUF"
PAIRS = configured_pairs()  # {pair: PRECISION} of the tests' configuration


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tests' workflow with every pair's output, checksum and validation made (no HUB_UPLOAD)."""
    wf = copy_workflow(tmp_path_factory.mktemp("publish") / "wf")
    snakemake(wf)
    return wf


@pytest.fixture
def hub():
    h = Hub()
    yield h
    h.close()


@pytest.fixture
def wf(built, tmp_path) -> Path:
    """A copy of the built workflow (times kept, so nothing is out of date) that publishes to REPO."""
    wf = shutil.copytree(built, tmp_path / "wf", symlinks=True)
    upload(wf, {"repo": "test-org/{model}-GGUF"})
    return wf


def upload(wf: Path, settings: dict | None, **config) -> None:
    edit_yaml(wf / "configurations/converter_args.yaml", lambda d: d.update(HUB_UPLOAD=settings, **config))


def env(hub: Hub, tmp_path: Path, token: str | None = None) -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_TOKEN": hub.token if token is None else token}


def writes(hub: Hub) -> list[str]:
    return [r for r in hub.requests if r.startswith(("POST", "PUT"))]


def expected(wf: Path, pairs: dict[str, str] = PAIRS) -> dict[str, Path]:
    """{path in the repository: local file} of every pair's GGUF and checksum, from the configuration."""
    files = {}
    for pair, precision in pairs.items():
        for suffix in (".gguf", ".gguf.sha256"):
            name = f"{MODEL}-{precision}{suffix}"
            files[f"{pair}/{name}"] = wf / "outputs" / pair / name
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_back(hub: Hub, path: str, tmp_path: Path, token: bool = True) -> bytes:
    """A file of REPO as huggingface_hub downloads it from the stand-in."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(REPO, path, endpoint=hub.url, token=hub.token if token else False,
                                cache_dir=tmp_path / "read-back")).read_bytes()


def record(wf: Path) -> Path:
    return wf / f"outputs/published/{MODEL}.json"


def test_first_publish_uploads_every_pair_in_one_commit(wf, hub, tmp_path):
    upload(wf, {"repo": "test-org/{model}-GGUF", "private": False})
    run = snakemake(wf, env=env(hub, tmp_path))
    assert run.jobs() == {"publish": 1}, run.output
    repo = hub.repos[REPO]
    files = expected(wf)
    assert len(repo.commits) == 1
    assert sorted(repo.commits[0]["added"]) == sorted([*files, "README.md", ".hf2gguf-published.json"])
    assert sorted(hub.files(REPO)) == sorted([*files, "README.md", ".hf2gguf-published.json", ".gitattributes"])
    assert not repo.private
    for path, local in files.items():
        data = read_back(hub, path, tmp_path, token=False)  # a public repo: anyone reads it
        assert data == local.read_bytes(), path
    for pair, precision in PAIRS.items():
        gguf = f"{MODEL}-{precision}.gguf"
        listed = (wf / "outputs" / pair / f"{gguf}.sha256").read_text().split()
        assert listed == [sha256(read_back(hub, f"{pair}/{gguf}", tmp_path)), gguf]
    assert not any("xet" in r for r in hub.requests)  # git LFS only
    rec = json.loads(record(wf).read_text())
    assert rec["repo"] == REPO and rec["commit"] == repo.refs["main"] == repo.commits[0]["oid"]
    assert {p: rec["files"][p] for p in files} == {p: sha256(f.read_bytes()) for p, f in files.items()}

    card = read_back(hub, "README.md", tmp_path).decode()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["quantized_by"] == "test-org" and "gguf" in header["tags"]
    assert "base_model" not in header and "license" not in header  # a local folder without a license
    assert "b11312" in card and "hf2gguf 0.1.0" in card
    for pair, precision in PAIRS.items():
        report = json.loads((wf / "outputs" / pair / f"{MODEL}-{precision}.json").read_text())
        row = next(line for line in card.splitlines() if line.startswith(f"| {pair} |"))
        assert f"| {precision} |" in row and f"{report['kl_divergence']:.6f}" in row
        assert f"{100 * report['top1_agreement']:.1f}%" in row and f"{report['bits_per_weight']:.2f}" in row
        speed = json.loads((wf / "outputs" / pair / f"{MODEL}-{precision}.speed.json").read_text())
        assert row.endswith(f"| {speed['prompt_tps']:.1f} | {speed['generation_tps']:.1f} |"), row


def test_a_rerun_publishes_nothing(wf, hub, tmp_path):
    snakemake(wf, env=env(hub, tmp_path))
    head, n = hub.repos[REPO].refs["main"], len(hub.requests)
    run = snakemake(wf, env=env(hub, tmp_path))
    assert "Nothing to be done" in run.output and hub.requests[n:] == []
    run = snakemake(wf, "-R", "publish", env=env(hub, tmp_path))  # forced: it asks the Hub and commits nothing
    assert run.jobs() == {"publish": 1}, run.output
    assert "nothing changed, nothing committed" in run.output
    assert len(hub.repos[REPO].commits) == 1 and hub.repos[REPO].refs["main"] == head
    assert not [r for r in writes(hub)[n:] if not r.startswith("POST /api/repos/create")]
    assert json.loads(record(wf).read_text())["commit"] == head


def test_a_changed_precision_is_published_in_a_new_commit(wf, hub, tmp_path):
    snakemake(wf, env=env(hub, tmp_path))
    hub.add(REPO, dict(hub.files(REPO), **{"GPU_LLM_LLAMA/notes.md": b"added by hand\n"}))  # not ours: kept
    pair, old = "GPU_LLM_LLAMA", PAIRS["GPU_LLM_LLAMA"]
    new = "Q5_K_M" if old != "Q5_K_M" else "Q6_K"
    yaml_path = wf / "configurations" / pair / f"converter_args_{pair.lower()}.yaml"
    edit_yaml(yaml_path, lambda d: d.update(PRECISION=new))
    n = len(hub.requests)
    run = snakemake(wf, env=env(hub, tmp_path))
    assert run.jobs()["publish"] == 1 and run.jobs()["validate"] == 1, run.output
    commits = hub.repos[REPO].commits
    assert len(commits) == 2
    now = expected(wf, dict(PAIRS, **{pair: new}))
    stale = [f"{pair}/{MODEL}-{old}.gguf", f"{pair}/{MODEL}-{old}.gguf.sha256"]
    assert sorted(commits[1]["added"]) == sorted([f"{pair}/{MODEL}-{new}.gguf", f"{pair}/{MODEL}-{new}.gguf.sha256",
                                                  "README.md", ".hf2gguf-published.json"])
    assert sorted(commits[1]["deleted"]) == sorted(stale)
    assert sorted(hub.files(REPO)) == sorted([*now, "README.md", ".hf2gguf-published.json", ".gitattributes",
                                              "GPU_LLM_LLAMA/notes.md"])
    new_gguf = wf / "outputs" / pair / f"{MODEL}-{new}.gguf"
    assert read_back(hub, f"{pair}/{new_gguf.name}", tmp_path) == new_gguf.read_bytes()
    puts = [r for r in hub.requests[n:] if r.startswith("PUT")]
    assert puts == [f"PUT /lfs-upload/{REPO}/{sha256(new_gguf.read_bytes())}/{new_gguf.stat().st_size}"]
    assert f"| {new} |" in read_back(hub, "README.md", tmp_path).decode()


def test_an_auto_pair_is_published_under_the_precision_it_chose(wf, hub, tmp_path):
    """PRECISION: AUTO end to end: the candidates are made and measured, the choice is published as
    <model>-<chosen>.gguf with a .sha256 that names it (sha256sum -c passes on a download), and the card says AUTO."""
    pair = "GPU_LLM_LLAMA"
    edit_yaml(wf / "configurations" / pair / f"converter_args_{pair.lower()}.yaml",
              lambda d: d.update(PRECISION="AUTO", AUTO_CANDIDATES=["Q8_0", "Q4_0"]))
    run = snakemake(wf, env=env(hub, tmp_path))
    assert run.jobs()["choose"] == 1 and run.jobs()["publish"] == 1, run.output
    decision = json.loads((wf / "outputs" / pair / f"{MODEL}-AUTO.json").read_text())
    chosen = decision["chosen_precision"]
    assert chosen in ("Q8_0", "Q4_0")
    name = f"{MODEL}-{chosen}.gguf"
    fixed = expected(wf, {p: v for p, v in PAIRS.items() if p != pair})
    assert sorted(hub.files(REPO)) == sorted([*fixed, f"{pair}/{name}", f"{pair}/{name}.sha256", "README.md",
                                              ".hf2gguf-published.json", ".gitattributes"])
    gguf = read_back(hub, f"{pair}/{name}", tmp_path)
    assert gguf == (wf / "outputs" / pair / f"{MODEL}-AUTO.gguf").read_bytes()
    assert gguf == (wf / "outputs" / "candidates" / name).read_bytes()  # the chosen candidate itself
    download = tmp_path / "download"
    download.mkdir()
    (download / name).write_bytes(gguf)
    (download / f"{name}.sha256").write_bytes(read_back(hub, f"{pair}/{name}.sha256", tmp_path))
    check = subprocess.run(["sha256sum", "-c", f"{name}.sha256"], cwd=download, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout == f"{name}: OK\n", check.stdout + check.stderr
    card = read_back(hub, "README.md", tmp_path).decode()
    row = next(line for line in card.splitlines() if line.startswith(f"| {pair} |"))
    assert row.startswith(f"| {pair} | {chosen} (AUTO) | `{pair}/{name}` |"), row
    assert f"{decision['kl_divergence']:.6f}" in row and "chosen by the workflow for the pair's budget" in card
    assert "AUTO.gguf" not in card
    for path, local in fixed.items():
        assert read_back(hub, path, tmp_path) == local.read_bytes(), path


def test_without_a_token_it_says_to_set_hf_token(wf, hub, tmp_path):
    run = snakemake(wf, check=False, env=env(hub, tmp_path, token=""))
    assert run.returncode != 0
    assert f"HF_TOKEN is missing or not allowed to write to {REPO}: set HF_TOKEN to a write token" in run.output
    assert not record(wf).exists() and REPO not in hub.repos


def test_a_connection_dropped_mid_upload_is_finished_by_a_rerun(wf, hub, tmp_path):
    gguf = expected(wf)[f"GPU_LLM_LLAMA/{MODEL}-{PAIRS['GPU_LLM_LLAMA']}.gguf"]
    oid = sha256(gguf.read_bytes())
    hub.drop_uploads = {oid}  # every PUT of this file is cut off halfway: huggingface_hub's retries give up
    run = snakemake(wf, check=False, env=env(hub, tmp_path))
    assert run.returncode != 0
    assert f"the connection to {hub.url} failed while publishing to {REPO}" in run.output
    assert "Run snakemake again" in run.output
    assert not record(wf).exists() and hub.repos[REPO].commits == []
    hub.drop_uploads = set()
    n = len(hub.requests)
    snakemake(wf, env=env(hub, tmp_path))
    puts = [r for r in hub.requests[n:] if r.startswith("PUT")]
    assert puts == [f"PUT /lfs-upload/{REPO}/{oid}/{gguf.stat().st_size}"]  # the others were uploaded before
    assert len(hub.repos[REPO].commits) == 1
    for path, local in expected(wf).items():
        assert read_back(hub, path, tmp_path) == local.read_bytes(), path


def test_a_private_repo(wf, hub, tmp_path):
    snakemake(wf, env=env(hub, tmp_path))  # private: the default
    assert hub.repos[REPO].private and json.loads(record(wf).read_text())["private"] is True
    from huggingface_hub.errors import RepositoryNotFoundError

    path, local = next(iter(expected(wf).items()))
    with pytest.raises(RepositoryNotFoundError) as refused:
        read_back(hub, path, tmp_path, token=False)
    assert refused.value.response.status_code == 401
    assert read_back(hub, path, tmp_path) == local.read_bytes()


def test_nothing_is_uploaded_without_hub_upload(wf, hub, tmp_path):
    upload(wf, None)
    run = snakemake(wf, env=env(hub, tmp_path))
    assert "Nothing to be done" in run.output
    run = snakemake(wf, f"outputs/published/{MODEL}.json", check=False, env=env(hub, tmp_path))
    assert run.returncode != 0 and "HUB_UPLOAD is not set in converter_args.yaml" in run.output
    assert hub.requests == [] and not record(wf).exists()


def test_hub_upload_needs_validation(wf, hub, tmp_path):
    upload(wf, {"repo": "test-org/{model}-GGUF"}, VALIDATE=False)
    run = snakemake(wf, "-n", check=False, env=env(hub, tmp_path))
    assert run.returncode != 0
    assert "configurations/converter_args.yaml: HUB_UPLOAD publishes only validated outputs" in run.output
    assert hub.requests == []


# --- hub_publish's functions --------------------------------------------------------------------------------------
def report(**extra) -> dict:
    return {"file_bytes": 1_536_864, "files": 1, "bits_per_weight": 6.3274, "kl_divergence": 0.020296,
            "top1_agreement": 0.66508, "perplexity": 1460.1729, "evaluated_tokens": 630, "loaded": True,
            "llama_cpp_build": "b11312 (0c1e570)", "converter": "hf2gguf", **extra}


def test_settings():
    assert hub_publish.repo_id({"repo": "me/{model}-GGUF"}, "m") == "me/m-GGUF"
    assert hub_publish.quantized_by({"repo": "me/{model}-GGUF"}, "m") == "me"
    assert hub_publish.quantized_by({"repo": "me/x", "quantized_by": "Ada"}, "m") == "Ada"
    assert hub_publish.visibility({"repo": "me/x"}) == "private"
    assert hub_publish.visibility({"repo": "me/x", "private": False}) == "public"
    with pytest.raises(ValueError, match="HUB_UPLOAD is not set in converter_args.yaml"):
        hub_publish.repo_id(None, "m")


def test_the_card_of_a_hub_model(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# m\n")
    (folder / ".hf2gguf-source.json").write_text(json.dumps(
        {"repo": "org/m", "revision": "main", "commit": "c0ffee" * 6 + "c0ff", "endpoint": "https://huggingface.co"}))
    source, licensing = hub_publish.source_facts(folder)
    assert licensing == {"license": "apache-2.0"}
    outputs = [PairOutput("GPU_LLM_LLAMA", "Q4_K_M", Path("out/GPU_LLM_LLAMA/m-Q4_K_M.gguf"), Path("x"), report()),
               PairOutput("CPU_LLM_LLAMA", "Q8_0", Path("out/CPU_LLM_LLAMA/m-Q8_0.gguf"), Path("y"),
                          report(prompt_tps=812.25, kl_divergence=0.00031))]
    card = hub_publish.model_card("m", "me/m-GGUF", outputs, "me", source, licensing)
    header = yaml.safe_load(card.split("---\n")[1])
    assert header == {"base_model": "org/m", "license": "apache-2.0", "tags": ["gguf", "llama.cpp"],
                      "quantized_by": "me"}
    assert "[org/m](https://huggingface.co/org/m) at commit `" + "c0ffee" * 6 + "c0ff`" in card
    assert "hf2gguf 0.1.0" in card and "llama.cpp b11312 (0c1e570)" in card
    lines = card.splitlines()
    assert "| Pair | Precision | File | Size | Bits/weight | KLD | Top-1 | PPL | Prompt tokens/s |" in lines
    assert ("| GPU_LLM_LLAMA | Q4_K_M | `GPU_LLM_LLAMA/m-Q4_K_M.gguf` | 1.54 MB | 6.33 | 0.020296 | 66.5% | 1460.17 "
            "| - |") in lines
    assert ("| CPU_LLM_LLAMA | Q8_0 | `CPU_LLM_LLAMA/m-Q8_0.gguf` | 1.54 MB | 6.33 | 0.000310 | 66.5% | 1460.17 "
            "| 812.2 |") in lines
    no_speed = hub_publish.model_card("m", "me/m-GGUF", outputs[:1], "me")
    assert "tokens/s" not in no_speed and "base_model" not in no_speed and "not from the Hub" in no_speed


def test_a_hub_models_card_names_its_source_and_license(hub, tmp_path):
    """scripts/hub_download.py fetches the source's README.md too, for its license; the card names the source."""
    tiny = {p.name: p.read_bytes() for p in (ROOT / "models" / MODEL).iterdir() if p.name != "README.md"}
    commit = hub.add("test-org/licensed", dict(tiny, **{"README.md": b"---\nlicense: mit\n---\n# licensed\n"}))
    folder = tmp_path / "models" / "licensed"
    subprocess.run([sys.executable, str(ROOT / "scripts/hub_download.py"), "test-org/licensed", str(folder)],
                   check=True, env={**os.environ, **env(hub, tmp_path, token="")})
    source, licensing = hub_publish.source_facts(folder)
    assert licensing == {"license": "mit"} and source["repo"] == "test-org/licensed" and source["commit"] == commit
    outputs = [PairOutput("CPU_LLM_LLAMA", "Q8_0", Path("out/CPU_LLM_LLAMA/licensed-Q8_0.gguf"), Path("x"), report())]
    card = hub_publish.model_card("licensed", "me/licensed-GGUF", outputs, "me", source, licensing)
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["base_model"] == "test-org/licensed" and header["license"] == "mit"
    assert f"[test-org/licensed]({hub.url}/test-org/licensed) at commit `{commit}`" in card


def test_what_is_uploaded_and_deleted():
    def local(data: bytes) -> Local:
        return Local.of_bytes(data)

    gguf, new, text = local(b"\0gguf"), local(b"\0other"), local(b"abc  m.gguf\n")
    files = {"P/m-Q4_0.gguf": gguf, "P/m-Q8_0.gguf": new, "P/m-Q4_0.gguf.sha256": text, "README.md": local(b"card")}
    remote = {"P/m-Q4_0.gguf": Remote(5, "pointer-blob", gguf.sha256),  # LFS, the same bytes
              "P/m-Q4_0.gguf.sha256": Remote(text.size, hub_publish.git_blob_id(text.source)),  # regular, the same
              "README.md": Remote(4, hub_publish.git_blob_id(b"old!")),  # regular, changed
              "P/m-Q2_K.gguf": Remote(9, "x", "f" * 64),  # published before, no longer an output
              "P/hand.gguf": Remote(9, "y", "e" * 64)}  # put there by someone else
    previous = {"P/m-Q2_K.gguf", "P/m-Q4_0.gguf", "P/gone.gguf"}  # gone.gguf: already deleted by hand
    upload, delete = hub_publish.plan(files, remote, previous)
    assert upload == ["P/m-Q8_0.gguf", "README.md"]
    assert delete == ["P/m-Q2_K.gguf"]
    assert hub_publish.plan(files, {p: Remote(f.size, "?", f.sha256) for p, f in files.items()}, set()) == ([], [])


def test_a_gguf_that_changed_after_validation_is_refused(tmp_path):
    folder = tmp_path / "P"
    folder.mkdir()
    (folder / "m-Q4_0.gguf").write_bytes(b"GGUF validated")
    (folder / "m-Q4_0.gguf.sha256").write_text(f"{sha256(b'GGUF validated')}  m-Q4_0.gguf\n")
    output = PairOutput("P", "Q4_0", folder / "m-Q4_0.gguf", folder / "m-Q4_0.gguf.sha256", report())
    assert sorted(hub_publish.pair_files(output)) == ["P/m-Q4_0.gguf", "P/m-Q4_0.gguf.sha256"]
    (folder / "m-Q4_0.gguf").write_bytes(b"GGUF changed since")
    with pytest.raises(PublishError, match="m-Q4_0.gguf does not match its checksum in .*m-Q4_0.gguf.sha256"):
        hub_publish.pair_files(output)


def test_a_split_pair_keeps_its_folder_of_shards(tmp_path):
    """The checksum rule lists shards as <model>-<PRECISION>/<shard> from the pair's folder: so are they published."""
    shards = tmp_path / "P" / "m-Q4_0"
    shards.mkdir(parents=True)
    names = [f"m-Q4_0-0000{i}-of-00002.gguf" for i in (1, 2)]
    for i, name in enumerate(names):
        (shards / name).write_bytes(b"GGUF shard %d" % i)
    checksum = tmp_path / "P" / "m-Q4_0.gguf.sha256"
    checksum.write_text("".join(f"{sha256((shards / n).read_bytes())}  m-Q4_0/{n}\n" for n in names))
    output = PairOutput("P", "Q4_0", shards, checksum, report(files=2))
    files = hub_publish.pair_files(output)
    assert sorted(files) == ["P/m-Q4_0.gguf.sha256", *[f"P/m-Q4_0/{n}" for n in names]]
    assert files[f"P/m-Q4_0/{names[1]}"].sha256 == sha256(b"GGUF shard 1")
    card = hub_publish.model_card("m", "me/m-GGUF", [output], "me")
    assert "| P | Q4_0 | `P/m-Q4_0/` (2 shards) |" in card
    assert "hf download me/m-GGUF --include 'P/m-Q4_0/*' --local-dir ." in card and f"-m P/m-Q4_0/{names[0]}" in card

"""scripts/llama_toolchain.py: cache keys, the checksum gate, and the built binary."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import llama_toolchain as tc
from conftest import TINY
from hf2gguf.convert import convert


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF2GGUF_CACHE", str(tmp_path / "c"))
    assert tc.cache_root() == tmp_path / "c"
    monkeypatch.delenv("HF2GGUF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tc.cache_root() == tmp_path / "xdg" / "hf2gguf"


def test_build_key_names_the_build_and_its_flags():
    portable = tc.build_key()
    assert portable == "b11312-portable"
    assert tc.build_key(native=True).startswith("b11312-native-")
    assert tc.build_key(extra=("-DGGML_AVX512=ON",)) not in (portable, tc.build_key(extra=("-DGGML_AVX512=OFF",)))
    assert "-DGGML_NATIVE=OFF" in tc.cmake_args() and "-DBUILD_SHARED_LIBS=OFF" in tc.cmake_args()
    assert "-DLLAMA_BUILD_COMMIT=0c1e570" in tc.cmake_args() and "-DLLAMA_OPENSSL=OFF" in tc.cmake_args()


def fake_pip(content: bytes):
    def run(cmd, **kw):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / tc.SDIST_FILE).write_bytes(content)
        return subprocess.CompletedProcess(cmd, 0)
    return run


def test_a_download_with_the_wrong_checksum_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(tc.subprocess, "run", fake_pip(b"not the real sdist"))
    with pytest.raises(tc.ToolchainError, match="expected 832db069.*refusing to build"):
        tc.fetch_sdist(tmp_path)
    assert not (tmp_path / "sdist" / tc.SDIST_FILE).exists()


def test_a_corrupt_cached_sdist_is_fetched_again(monkeypatch, tmp_path):
    cached = tmp_path / "sdist" / tc.SDIST_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"truncated")
    calls = []
    monkeypatch.setattr(tc.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or fake_pip(b"x")(cmd))
    with pytest.raises(tc.ToolchainError):
        tc.fetch_sdist(tmp_path)
    assert len(calls) == 1 and not cached.exists()


def test_a_failed_download_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(tc.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(tc.ToolchainError, match="place llama_cpp_python-0.3.36.tar.gz .* or set LLAMA_QUANTIZE"):
        tc.fetch_sdist(tmp_path)


def test_the_built_llama_quantize_is_the_pinned_build(llama_quantize, tmp_path):
    info = (Path(llama_quantize).parent.parent / "build-info.json").read_text()
    assert '"llama_build": "b11312"' in info and tc.SDIST_SHA256 in info
    f16 = convert(TINY, tmp_path / "f16.gguf", "F16", log=lambda m: None)
    proc = subprocess.run([llama_quantize, f16, tmp_path / "q.gguf", "Q4_0", "1"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stderr.splitlines()[0].endswith("(build 11312, commit 0c1e570)"), proc.stderr[:300]


def test_the_gguf_library_is_the_one_the_pinned_llama_cpp_ships():
    """Our converter writes with PyPI's gguf (names, keys and enums come from it); llama.cpp's converter writes
    with its own gguf-py. pyproject.toml's range must hold the installed release and the sdist's gguf-py, and no
    release our tests never saw: a new llama.cpp pin brings a new gguf, and pyproject.toml must follow it."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    pin = next(Requirement(r) for r in project["project"]["dependencies"] if r.startswith("gguf"))
    shipped = tomllib.loads((tc.extract_source(tc.cache_root()) / "gguf-py/pyproject.toml").read_text())
    assert shipped["project"]["version"] in pin.specifier, (pin, shipped["project"]["version"])
    assert version("gguf") in pin.specifier
    assert list(pin.specifier.filter(["0.17.1", "0.18.0", "1.0.0"])) == [], f"{pin}: gguf releases we never tested"

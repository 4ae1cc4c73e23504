#!/usr/bin/env python3
"""Build llama.cpp's tools (llama-quantize, ...) from a pinned, checksummed source, once per machine.

The source is the PyPI sdist of llama-cpp-python, which vendors llama.cpp at a known build.
Builds are cached outside the working tree, under ``$HF2GGUF_CACHE`` (default
``${XDG_CACHE_HOME:-~/.cache}/hf2gguf``), keyed by the llama.cpp build and the CMake flags, so a
second clone or a CI rerun on the same machine reuses them.  A lock file serialises concurrent builds.

    python scripts/llama_toolchain.py --dest outputs/toolchain/KEY/bin llama-quantize
"""

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_BUILD_NUMBER = "11312"
LLAMA_BUILD_COMMIT = "0c1e570"
LLAMA_BUILD = f"b{LLAMA_BUILD_NUMBER}"

BASE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_OPENSSL=OFF",
    f"-DLLAMA_BUILD_NUMBER={LLAMA_BUILD_NUMBER}",
    f"-DLLAMA_BUILD_COMMIT={LLAMA_BUILD_COMMIT}",
)


class ToolchainError(RuntimeError):
    pass


def cache_root() -> Path:
    if os.environ.get("HF2GGUF_CACHE"):
        return Path(os.environ["HF2GGUF_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "hf2gguf"


def _cpu_fingerprint() -> str:
    """Native builds are only valid on the CPU they were built for (HPC homes are shared)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    lines = [l for l in text.splitlines() if l.startswith(("model name", "flags", "Features"))]
    return hashlib.sha256("\n".join(sorted(set(lines))).encode()).hexdigest()[:8]


def cmake_args(native: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    return [*BASE_CMAKE_ARGS, f"-DGGML_NATIVE={'ON' if native else 'OFF'}", *extra]


def build_key(native: bool = False, extra: tuple[str, ...] = ()) -> str:
    """Names a build: the llama.cpp build, portable/native and a hash of any extra CMake flags.

    Cheap and pure, because the workflow computes it at parse time: a different key is a different
    toolchain path, so changing the pin or the flags makes every quantized output stale."""
    key = f"{LLAMA_BUILD}-{'native-' + _cpu_fingerprint() if native else 'portable'}"
    if extra:
        key += "-" + hashlib.sha256("\0".join(extra).encode()).hexdigest()[:8]
    return key


def tool_path(name: str, configured_quantize: str | None, from_env: bool, build_dir: str, env_dir: str) -> str:
    """Where the workflow's jobs find llama.cpp's tool `name`: beside a configured llama-quantize (LLAMA_QUANTIZE),
    else in the jobs' conda env or container (env_dir, with --sdm conda or apptainer: nothing is built), else in
    build_dir, where the workflow builds them. A configured llama-quantize that is not an executable file raises
    FileNotFoundError."""
    if configured_quantize:
        if not (os.path.isfile(configured_quantize) and os.access(configured_quantize, os.X_OK)):
            raise FileNotFoundError(f"LLAMA_QUANTIZE={configured_quantize} is not an executable file")
        if name == "llama-quantize":
            return configured_quantize
        return os.path.join(os.path.dirname(configured_quantize), name)
    return os.path.join(env_dir if from_env else build_dir, name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"[llama-toolchain] {msg}", file=sys.stderr, flush=True)


def fetch_sdist(root: Path) -> Path:
    """The pinned sdist, from the cache or from PyPI, always checked against its sha256."""
    path = root / "sdist" / SDIST_FILE
    if path.exists():
        if _sha256(path) == SDIST_SHA256:
            return path
        log(f"cached {path} has the wrong checksum; fetching it again")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        log(f"downloading {SDIST_NAME}=={SDIST_VERSION} (77 MB) from the package index")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", "-d", tmp, f"{SDIST_NAME}=={SDIST_VERSION}"]
        res = subprocess.run(cmd)
        got = Path(tmp) / SDIST_FILE
        if res.returncode != 0 or not got.exists():
            raise ToolchainError(
                f"could not download {SDIST_NAME}=={SDIST_VERSION}. Without network access, place "
                f"{SDIST_FILE} (sha256 {SDIST_SHA256}) at {path}, or set LLAMA_QUANTIZE to an "
                "existing llama-quantize binary.")
        digest = _sha256(got)
        if digest != SDIST_SHA256:
            raise ToolchainError(f"{SDIST_FILE} has sha256 {digest}, expected {SDIST_SHA256}; refusing to build it")
        os.replace(got, path)
    return path


def extract_source(root: Path) -> Path:
    src = root / "src" / f"llama.cpp-{LLAMA_BUILD}"
    if (src / "CMakeLists.txt").exists():
        return src
    sdist = fetch_sdist(root)
    prefix = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
    src.parent.mkdir(parents=True, exist_ok=True)
    log(f"extracting llama.cpp {LLAMA_BUILD} from {sdist.name}")
    with tempfile.TemporaryDirectory(dir=src.parent) as tmp, tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(prefix) and "/.git" not in m.name[len(prefix) - 1:]:
                m.name = m.name[len(prefix):]
                if m.name:
                    members.append(m)
        tar.extractall(tmp, members=members, filter="data")
        os.replace(tmp, src)
        os.makedirs(tmp)  # so TemporaryDirectory's cleanup finds something to remove
    return src


def build(targets: list[str], native: bool = False, extra: tuple[str, ...] = (), jobs: int | None = None) -> Path:
    """Builds the missing targets into the cache and returns the cached bin/ folder."""
    root = cache_root()
    key = build_key(native, extra)
    home = root / "llama.cpp" / key
    bindir = home / "bin"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [t for t in targets if not (bindir / t).exists()]
        if not missing:
            log(f"using cached {', '.join(targets)} from {bindir}")
            return bindir
        src = extract_source(root)
        builddir = home / "build"
        args = cmake_args(native, extra)
        if not (builddir / "CMakeCache.txt").exists():
            log("configuring: cmake " + " ".join(args))
            _run(["cmake", "-S", str(src), "-B", str(builddir), *args])
        jobs = jobs or os.cpu_count() or 1
        log(f"building {', '.join(missing)} with {jobs} jobs; the first tool takes about 5 minutes on 2 cores")
        _run(["cmake", "--build", str(builddir), "--config", "Release", "-j", str(jobs), "--target", *missing])
        bindir.mkdir(exist_ok=True)
        for t in missing:
            tmp = bindir / f".{t}.tmp"
            shutil.copy2(builddir / "bin" / t, tmp)
            os.replace(tmp, bindir / t)
        info = {"llama_build": LLAMA_BUILD, "commit": LLAMA_BUILD_COMMIT, "source": f"{SDIST_NAME}=={SDIST_VERSION}",
                "source_sha256": SDIST_SHA256, "cmake_args": args,
                "tools": sorted(p.name for p in bindir.iterdir() if not p.name.startswith("."))}
        (home / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        log(f"built {', '.join(missing)} into {bindir}")
        return bindir


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise ToolchainError(f"command failed with exit code {res.returncode}: {' '.join(cmd)}")


def installed_build(tool: str) -> tuple[str, str] | None:
    """(build, commit) of a binary installed by this script, from build-info.json beside its bin/ folder;
    None for a binary from elsewhere."""
    try:
        data = json.loads((Path(tool).resolve().parent.parent / "build-info.json").read_text())
        return data["llama_build"], data["commit"]
    except (OSError, ValueError, KeyError):
        return None


def install(targets: list[str], dest: Path, **kw) -> None:
    """Copies the cached binaries into dest (the workflow's toolchain folder), atomically each."""
    bindir = build(targets, **kw)
    dest.mkdir(parents=True, exist_ok=True)
    for t in targets:
        tmp = dest / f".{t}.tmp"
        shutil.copy2(bindir / t, tmp)
        os.replace(tmp, dest / t)
    shutil.copy2(bindir.parent / "build-info.json", dest.parent / "build-info.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", default=["llama-quantize"], help="CMake targets (default: llama-quantize)")
    p.add_argument("--dest", type=Path, help="copy the built binaries into this folder")
    p.add_argument("--native", action="store_true", help="build for this CPU (GGML_NATIVE=ON); not portable")
    p.add_argument("--cmake-arg", action="append", default=[], help="an extra CMake flag (repeatable)")
    p.add_argument("--jobs", type=int, help="parallel compile jobs (default: CPU count)")
    p.add_argument("--print-key", action="store_true", help="print the cache key for these flags and exit")
    p.add_argument("--fetch-sdist", action="store_true",
                   help="download and verify the pinned sdist, print its path and exit (builds nothing)")
    a = p.parse_args(argv)
    kw = dict(native=a.native, extra=tuple(a.cmake_arg))
    if a.print_key:
        print(build_key(**kw))
        return 0
    try:
        if a.fetch_sdist:
            print(fetch_sdist(cache_root()))
        elif a.dest:
            install(a.targets, a.dest, jobs=a.jobs, **kw)
        else:
            print(build(a.targets, jobs=a.jobs, **kw))
    except ToolchainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""llama.cpp's own convert_hf_to_gguf.py as the workflow's fallback converter, from the pinned sdist.

The converter, its conversion/ package and its gguf-py come from the same checksummed sdist as llama-quantize
(scripts/llama_toolchain.py): never from another gguf release. It needs torch and transformers, so it runs in
an environment of its own, built once per machine under $HF2GGUF_CACHE/reference-converter/ (a venv with
REQUIREMENTS, from the package index) and reused by later clones and CI runs. HF2GGUF_REFERENCE_PYTHON names
an existing interpreter with those packages instead (then nothing is built).

    python scripts/reference_converter.py --architectures        # what it converts (no torch needed)
    python scripts/reference_converter.py --build-env [RECORD]   # build or find the environment
    python scripts/reference_converter.py MODEL -o OUT.gguf --outtype F16 [--env RECORD]   # as scripts/convert.py

Standard library only (and hf2gguf's provenance): the workflow imports it at start-up.
"""
from __future__ import annotations

import argparse
import ast
import collections
import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_toolchain  # noqa: E402

# The sdist's requirements/requirements-convert_hf_to_gguf.txt, except torch: it pins 2.11.0, and 2.13.0 is the
# release this project tests with (its CPU build; the PyPI build for Linux pulls several GB of CUDA libraries).
# gguf is left out on purpose: the sdist's own gguf-py is put on PYTHONPATH.
REQUIREMENTS = ("torch==2.13.0", "transformers==4.57.6", "numpy~=2.2.6", "sentencepiece>=0.1.98,<0.3.0",
                "protobuf>=4.21.0,<5.0.0")
CHECK_IMPORTS = "import torch, transformers, sentencepiece, google.protobuf, numpy; assert torch.version.cuda is None"
ENV_VARIABLE = "HF2GGUF_REFERENCE_PYTHON"
NAME = f"llama.cpp's convert_hf_to_gguf.py ({llama_toolchain.LLAMA_BUILD})"
OUTTYPES = ("F32", "F16", "BF16", "Q8_0")
TAIL_LINES = 15


class ReferenceConverterError(RuntimeError):
    """A failure with the fix in its message."""


def log(msg: str) -> None:
    print(f"[reference-converter] {msg}", file=sys.stderr, flush=True)


def home() -> Path:
    return llama_toolchain.cache_root() / "reference-converter"


# --- what it converts -----------------------------------------------------------------------------------------
def parse_architectures(conversion_init: Path) -> list[str]:
    """The keys of TEXT_MODEL_MAP in conversion/__init__.py: the architectures (config.json `architectures`)
    whose text model convert_hf_to_gguf.py converts. Read with ast, without importing it (no torch)."""
    tree = ast.parse(conversion_init.read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP":
            return sorted(ast.literal_eval(node.value))
    raise ReferenceConverterError(f"{conversion_init} has no TEXT_MODEL_MAP; is it llama.cpp "
                                  f"{llama_toolchain.LLAMA_BUILD}?")


def architectures() -> list[str]:
    """llama.cpp's list, parsed once from the sdist and cached in the cache root (a no-op rerun reads one small
    file). The first call extracts the sdist (and downloads it if it is not cached)."""
    cache = home() / f"architectures-{llama_toolchain.LLAMA_BUILD}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    names = parse_architectures(source() / "conversion" / "__init__.py")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(names) + "\n")
    os.replace(tmp, cache)
    return names


def source() -> Path:
    try:
        return llama_toolchain.extract_source(llama_toolchain.cache_root())
    except llama_toolchain.ToolchainError as e:
        raise ReferenceConverterError(str(e)) from None


# --- its environment ------------------------------------------------------------------------------------------
def env_key() -> str:
    """Names an environment: the Python it is made from, the requirements and the sdist."""
    text = "\n".join([f"{sys.version_info.major}.{sys.version_info.minor}", *REQUIREMENTS, llama_toolchain.SDIST_FILE])
    return f"{llama_toolchain.LLAMA_BUILD}-py{sys.version_info.major}{sys.version_info.minor}-" \
           f"{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def env_dir() -> Path:
    return home() / f"env-{env_key()}"


def _run(cmd: list[str], log_tail: collections.deque | None = None) -> int:
    """Runs cmd, its output going to stderr and its last lines into log_tail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    for line in proc.stdout:
        sys.stderr.write(line)
        if log_tail is not None:
            log_tail.append(line.rstrip())
    return proc.wait()


def _offline_help(folder: Path) -> str:
    return (f"Without network access, either: set {ENV_VARIABLE} to a Python that has "
            f"{', '.join(REQUIREMENTS)} (a CPU build of torch); or build the environment on a machine with network "
            f"(python scripts/reference_converter.py --build-env) and copy {folder} to the same path here; or run with "
            "--sdm conda, which makes envs/reference-converter.yaml; or set CONVERTER: hf2gguf in "
            "configurations/converter_args.yaml to skip the models that need it")


def check_python(python: str) -> None:
    proc = subprocess.run([python, "-c", CHECK_IMPORTS], capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise ReferenceConverterError(f"{python} cannot run llama.cpp's converter ({last}). It needs "
                                      f"{', '.join(REQUIREMENTS)} (a CPU build of torch)")


def build_env() -> str:
    """The environment's python: HF2GGUF_REFERENCE_PYTHON, else the cached venv, built first if missing. A
    failed or interrupted build leaves nothing that looks complete (.complete is written last)."""
    if os.environ.get(ENV_VARIABLE):
        python = os.environ[ENV_VARIABLE]
        check_python(python)
        log(f"using {python} ({ENV_VARIABLE})")
        return python
    folder = env_dir()
    python = folder / "bin" / "python"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / ".complete").exists():
            log(f"using the cached environment {folder}")
            return str(python)
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted build
        start = time.monotonic()
        log(f"building {folder}: {', '.join(REQUIREMENTS)} from the package index (once per machine; "
            "about 2 minutes)")
        try:
            _install(folder, python)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        (folder / ".complete").write_text(json.dumps({"requirements": REQUIREMENTS,
                                                      "seconds": round(time.monotonic() - start)}) + "\n")
        log(f"built {folder} in {time.monotonic() - start:.0f} s")
        return str(python)


def _install(folder: Path, python: Path) -> None:
    if _run([sys.executable, "-m", "venv", str(folder)]):
        raise ReferenceConverterError(f"python -m venv {folder} failed; install the venv module (apt-get install "
                                      "python3-venv)")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    # resolve first, and refuse torch's CUDA build (its nvidia-* dependencies are several GB)
    report = folder / "pip-report.json"
    if _run([*pip, "install", "--quiet", "--dry-run", "--report", str(report), *REQUIREMENTS], tail):
        raise ReferenceConverterError("could not install llama.cpp's converter environment from the package index "
                                      "(no network?). pip's last lines:\n  " + "\n  ".join(tail) + "\n"
                                      + _offline_help(folder))
    planned = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    cuda = sorted(n for n in planned if n.lower().startswith("nvidia-"))
    if cuda:
        raise ReferenceConverterError(f"pip would install torch's CUDA build ({', '.join(cuda[:3])}, ...: several "
                                      "GB). Make the CPU build of torch==2.13.0 findable (PIP_FIND_LINKS or "
                                      f"PIP_EXTRA_INDEX_URL pointing at PyTorch's CPU wheels), or set {ENV_VARIABLE}")
    if _run([*pip, "install", "--quiet", *REQUIREMENTS], tail):
        raise ReferenceConverterError("pip install failed. Its last lines:\n  " + "\n  ".join(tail) + "\n"
                                      + _offline_help(folder))
    check_python(str(python))


def write_record(path: Path) -> None:
    """The workflow's record of the environment (outputs/toolchain/): which python runs the converter."""
    info = {"python": build_env(), "requirements": REQUIREMENTS, "converter": NAME,
            "source": f"{llama_toolchain.SDIST_NAME}=={llama_toolchain.SDIST_VERSION}",
            "source_sha256": llama_toolchain.SDIST_SHA256}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, path)


def recorded_python(record: Path) -> str:
    python = json.loads(record.read_text())["python"]
    if not os.access(python, os.X_OK):
        raise ReferenceConverterError(f"{python}, the python recorded in {record}, is missing (a cleaned cache, or a "
                                      f"node that does not see it). Delete {record} to build it again")
    return python


# --- converting -----------------------------------------------------------------------------------------------
def convert(model: Path, out: Path, outtype: str, python: str, fingerprint: Path | None = None,
            log_path: str | None = None) -> None:
    """convert_hf_to_gguf.py MODEL --outtype T into a temporary file beside out, renamed when complete; the GGUF
    gets the workflow's provenance keys and hf2gguf.converter."""
    from hf2gguf.atomic import atomic_path

    src = source()
    kv = provenance(Path(model), fingerprint, outtype)
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with atomic_path(out) as tmp:
        spec = {"src": str(src), "kv": kv, "argv": [str(model), "--outtype", outtype.lower(), "--outfile", str(tmp)]}
        start = time.monotonic()
        log(f"{NAME}: {model} -> {out} ({outtype}), with {python}")
        driver = Path(__file__).resolve().with_name("reference_driver.py")
        proc = subprocess.Popen([python, str(driver), json.dumps(spec)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip())
        code = proc.wait()
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
        if code or not tmp.exists():
            where = f"; all of it is in {log_path}" if log_path else ""
            raise ReferenceConverterError(f"{NAME} failed on {model} (exit status {code}). Its last lines:\n  "
                                          + "\n  ".join(tail) + f"\n(nothing was written{where})")
        log(f"wrote {out} in {time.monotonic() - start:.1f} s, peak RSS {peak} MiB")


def provenance(model: Path, fingerprint: Path | None, outtype: str) -> dict[str, str]:
    """The KV pairs our converter writes (hf2gguf.convert.provenance: the same digest of the fingerprint's
    sha256s, so both converters' files of one folder agree; tests/test_fallback.py checks it), plus
    hf2gguf.converter. Computed here so that this script needs no numpy or PyPI gguf."""
    from hf2gguf import __version__

    kv = {"hf2gguf.version": __version__, "hf2gguf.precision": outtype, "hf2gguf.converter": NAME}
    if fingerprint:
        files = json.loads(Path(fingerprint).read_text())["files"]
        kv["hf2gguf.source.sha256"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    hub = model / ".hf2gguf-source.json"
    if hub.exists():
        source_info = json.loads(hub.read_text())
        kv["hf2gguf.source.repo"], kv["hf2gguf.source.commit"] = source_info["repo"], source_info["commit"]
    return kv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, nargs="?", help="the model folder to convert")
    ap.add_argument("-o", "--output", type=Path, help="the GGUF to write")
    ap.add_argument("--outtype", choices=OUTTYPES, default="F16")
    ap.add_argument("--fingerprint", type=Path, help="the workflow's fingerprint of the model folder")
    ap.add_argument("--env", type=Path, help="the record written by --build-env; default: this interpreter")
    ap.add_argument("--log", help="the log file, named in errors")
    ap.add_argument("--threads", type=int, help="ignored: the converter runs on one thread")
    ap.add_argument("--build-env", nargs="?", const="", metavar="RECORD",
                    help="build the environment (or find it) and write its record to RECORD")
    ap.add_argument("--architectures", action="store_true", help="list the architectures it converts")
    a = ap.parse_args(argv)
    try:
        if a.architectures:
            print("\n".join(architectures()))
        elif a.build_env is not None:
            write_record(Path(a.build_env)) if a.build_env else print(build_env())
        elif a.model_dir and a.output:
            python = recorded_python(a.env) if a.env else sys.executable
            convert(a.model_dir, a.output, a.outtype, python, a.fingerprint, a.log)
        else:
            ap.error("give a model folder and -o, --build-env or --architectures")
    except ReferenceConverterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

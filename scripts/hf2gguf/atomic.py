"""Atomic outputs: write to a temporary name beside the target, rename it over the target when complete."""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def _temporary(out: Path) -> Path:
    """The temporary name beside out, once the temporaries that killed runs left there are removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(out: str | Path):
    """Yields a temporary path beside out. If the block succeeds, it becomes out; if not, it is removed, so
    a failed or interrupted write never leaves a file that looks finished."""
    out = Path(out)
    tmp = _temporary(out)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(out: str | Path):
    """Yields an empty temporary folder beside out, which replaces out when the block succeeds and is removed
    when it fails."""
    out = Path(out)
    tmp = _temporary(out)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(out: str | Path, data) -> None:
    """data as indented JSON (UTF-8) in out, atomically: a job's report is either whole or absent."""
    import json

    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

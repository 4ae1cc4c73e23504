"""Atomic outputs: write to a temporary name beside the target, rename it over the target when complete."""
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(out: str | Path):
    """Yields a temporary path beside out. If the block succeeds, it becomes out; if not, it is removed, so
    a failed or interrupted write never leaves a file that looks finished. Temporaries left by killed
    runs are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

#!/usr/bin/env python3
"""The sha256 of a pair's GGUF, or of every shard in its folder, in sha256sum's format.

    python scripts/checksum.py outputs/<PAIR>/<model>-<PRECISION>.gguf  OUT.sha256
    python scripts/checksum.py outputs/<PAIR>/<model>-<PRECISION>/      OUT.sha256

Each line is "<sha256>  <name>", the name relative to the GGUF's folder (a shard's is <folder>/<shard>), so that
`sha256sum -c OUT.sha256` checks it from the pair's folder. OUT is written atomically. Python's hashlib, not
coreutils' sha256sum: it uses the CPU's SHA extensions where there are any (about 3 times as fast here).
"""
import hashlib
import sys
from pathlib import Path

from hf2gguf.atomic import atomic_path


def sha256_lines(path: Path) -> str:
    files = sorted(path.rglob("*.gguf")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"error: {path}/ holds no .gguf file to checksum")
    lines = []
    for f in files:
        with open(f, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        lines.append(f"{digest}  {f.relative_to(path.parent)}\n")
    return "".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    path, out = Path(argv[0]), Path(argv[1])
    if not path.exists():
        raise SystemExit(f"error: {path}: no such GGUF or folder of shards")
    text = sha256_lines(path)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Command-line entry point of the converter: python scripts/convert.py --help"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf2gguf.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Command-line entry point of the converter: python scripts/convert.py --help"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf2gguf.cli import main  # noqa: E402
from hf2gguf.convert import convert  # noqa: E402

if __name__ == "__main__":
    if "snakemake" in globals():  # run by the convert rule's script: directive
        from pipeline import run_logged

        sm = snakemake  # noqa: F821
        run_logged(sm.log[0], convert, sm.params.folder, sm.output[0], sm.wildcards.ftype)
    else:
        sys.exit(main())

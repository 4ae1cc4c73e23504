#!/usr/bin/env python3
"""Check one output against its pair's device budget, into a JSON file beside its validation report.

    python scripts/budget.py OUT.gguf --budget '{"MAX_KLD": 0.05, ...}' [--report OUT.json] [--speed OUT.speed.json]
        [--enforce] [--where configurations/PAIR/....yaml] -o OUT.budget.json

A budget is what the device allows and what the user accepts, from the pair's YAML (BUDGET_FIELDS): the file's
size against MAX_FILE_SIZE, the validation's KL divergence and top-1 agreement against MAX_KLD and MIN_TOP1, the
benchmark's speeds against MIN_PROMPT_TPS and MIN_GENERATION_TPS. The JSON lists every check (limit, value, ok)
and whether all passed. With --enforce (ENFORCE_BUDGETS), a broken budget also fails the job, saying which checks
broke (Snakemake then removes the JSON of the failed job).
"""

import argparse
import json
import re
import sys
from pathlib import Path

from hf2gguf.atomic import write_json
from pipeline import gguf_files

# field: (what is measured, where it is read, "max" or "min"); the fields are pipeline.BUDGETS
BUDGET_FIELDS = {
    "MAX_FILE_SIZE": ("file_bytes", "file", "max"),
    "MAX_KLD": ("kl_divergence", "report", "max"),
    "MIN_TOP1": ("top1_agreement", "report", "min"),
    "MIN_PROMPT_TPS": ("prompt_tps", "speed", "min"),
    "MIN_GENERATION_TPS": ("generation_tps", "speed", "min"),
}
SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGT]?)")  # 6G = 6 GiB: what a device's memory is counted in


def size_bytes(value) -> int:
    """MAX_FILE_SIZE: bytes, or a number with K, M, G or T (powers of 1024), e.g. 6G or 500M."""
    if isinstance(value, int):
        return value
    m = SIZE.fullmatch(str(value).strip())
    if not m:
        raise ValueError(f"MAX_FILE_SIZE {value!r}: a number of bytes, or with K, M, G or T, e.g. 6G or 500M")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def budget_of(pair_cfg: dict) -> dict:
    """The budget fields a pair's YAML sets."""
    return {k: pair_cfg[k] for k in BUDGET_FIELDS if pair_cfg.get(k) is not None}


def needs(budget: dict) -> set[str]:
    """What the checks read: "report" (the validation) and/or "speed" (the benchmark)."""
    return {BUDGET_FIELDS[k][1] for k in budget} - {"file"}


def check(budget: dict, figures: dict) -> list[dict]:
    """Each budget field against the figures ({file_bytes, kl_divergence, ...}): its limit, the value, ok."""
    checks = []
    for field, limit in budget.items():
        key, _, kind = BUDGET_FIELDS[field]
        limit = size_bytes(limit) if field == "MAX_FILE_SIZE" else float(limit)
        value = figures[key]
        checks.append({"field": field, "measure": key, "limit": limit, "value": value,
                       "ok": value <= limit if kind == "max" else value >= limit})
    return checks


def describe(c: dict) -> str:
    """A broken check in words, e.g. "KLD 0.0322 > MAX_KLD 0.01"."""
    def fmt(v):
        return f"{v / 2**20:.1f} MiB" if c["measure"] == "file_bytes" else f"{v:.4g}"

    op = ">" if c["field"].startswith("MAX") else "<"
    return f"{c['measure']} {fmt(c['value'])} {op} {c['field']} {fmt(c['limit'])}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path, help="the output: a GGUF, or the folder of its shards")
    ap.add_argument("--budget", required=True, help="the pair's budget fields, as JSON")
    ap.add_argument("--report", type=Path, help="its validation report (.json)")
    ap.add_argument("--speed", type=Path, help="its benchmark (.speed.json)")
    ap.add_argument("--enforce", action="store_true", help="a broken budget fails (ENFORCE_BUDGETS)")
    ap.add_argument("--where", default="the pair's YAML", help="the file the budget comes from, for messages")
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args(argv)
    budget = json.loads(a.budget)
    figures = {"file_bytes": sum(f.stat().st_size for f in gguf_files(a.gguf))}
    for path in (a.report, a.speed):
        if path:
            figures |= json.loads(path.read_text(encoding="utf-8"))
    try:
        checks = check(budget, figures)
    except KeyError as e:
        raise SystemExit(f"error: the budget of {a.where} needs {e.args[0]}, which no input holds") from None
    broken = [describe(c) for c in checks if not c["ok"]]
    result = {"gguf": str(a.gguf), "budget_ok": not broken, "checks": checks, "broken": broken,
              "enforced": a.enforce}
    write_json(a.output, result)
    if broken:
        print(f"{a.gguf} breaks the budget of {a.where}: {'; '.join(broken)}", file=sys.stderr)
        if a.enforce:
            print("ENFORCE_BUDGETS is true: this fails the run. Choose another PRECISION, or change the budget",
                  file=sys.stderr)
            return 1
    else:
        print(f"{a.gguf}: within the budget of {a.where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

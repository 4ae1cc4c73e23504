#!/usr/bin/env python3
"""Choose the precision of a pair of PRECISION: AUTO from its candidates' measurements on the pair's hardware.

    python scripts/choose.py --precisions Q8_0 Q6_K ... --reports C1.json C2.json ... [--speeds C1.speed.json ...]
        --budget '{"MAX_KLD": 0.01}' --default-max-kld 0.05 --gguf outputs/PAIR/MODEL-AUTO.gguf \
        [--where configurations/PAIR/....yaml] -o outputs/PAIR/MODEL-AUTO.json

The rule (decide): among the candidates that meet every field of the pair's budget (scripts/budget.py), the
smallest file; ties go to the lower KL divergence, then to the earlier candidate. A pair that sets no MAX_KLD is
held to AUTO_MAX_KLD (default 0.05), so that a budget of size or speed alone, or none, never picks a file that
is useless. The JSON says which precision was chosen and why, every candidate's figures and what each breaks,
and holds the chosen candidate's validation and benchmark fields at its top level, so that it reads like a
validation report. When no candidate meets the budget, the job fails, naming the closest candidates and the
budgets each breaks, and writes nothing.
"""

import argparse
import json
import math
import sys
from pathlib import Path

from budget import BUDGET_FIELDS, check, describe
from hf2gguf.atomic import write_json

RULE = "the smallest file among the candidates that meet every budget"
CLOSEST = 3  # candidates named when none fits
# a candidate's figures kept in the decision's list of candidates
FIGURES = ("gguf", "file_bytes", "bits_per_weight", "kl_divergence", "top1_agreement", "perplexity", "prompt_tps",
           "generation_tps")


class NoCandidate(Exception):
    """No candidate meets the budget; the message names the closest ones and what each breaks."""


def excess(c: dict) -> float:
    """How far a broken check is from its limit, relative to it (0 for a check that passes)."""
    if c["ok"]:
        return 0.0
    value, limit = float(c["value"]), float(c["limit"])
    over = value / limit if c["field"].startswith("MAX") else limit / value if value else math.inf
    return over - 1 if math.isfinite(over) else math.inf


def decide(candidates: dict[str, dict], budget: dict, default_max_kld: float, where: str = "the pair") -> dict:
    """candidates: {precision: figures (validation, benchmark)}, in the pair's order. The precision chosen, why, and
    each candidate's checks; NoCandidate when none meets the budget."""
    effective = dict(budget)
    source = {field: field for field in budget}
    if "MAX_KLD" not in effective:
        effective["MAX_KLD"], source["MAX_KLD"] = default_max_kld, "AUTO_MAX_KLD"
    effective = {f: effective[f] for f in BUDGET_FIELDS if f in effective}  # a stable order
    rows = []
    for order, (precision, figures) in enumerate(candidates.items()):
        checks = check(effective, figures)
        broken = [describe(c).replace(f" {c['field']} ", f" {source[c['field']]} ") for c in checks if not c["ok"]]
        rows.append({"precision": precision, "order": order, "ok": not broken, "broken": broken, "checks": checks,
                     **{k: figures[k] for k in FIGURES if k in figures}})
    fitting = [r for r in rows if r["ok"]]
    limits = ", ".join(f"{source[f]} {v}" for f, v in effective.items())
    if not fitting:
        closest = sorted(rows, key=lambda r: (len(r["broken"]), sum(excess(c) for c in r["checks"]), r["order"]))
        lines = "\n".join(f"  {r['precision']}: {'; '.join(r['broken'])}" for r in closest[:CLOSEST])
        raise NoCandidate(f"{where}: no candidate of PRECISION: AUTO meets the budget ({limits}). The closest:\n"
                          f"{lines}\nRelax the budget, or add candidates to AUTO_CANDIDATES")
    chosen = min(fitting, key=lambda r: (r["file_bytes"], r["kl_divergence"], r["order"]))
    why = (f"{RULE} ({limits}): {chosen['precision']}, {chosen['file_bytes']} bytes, is the smallest of the "
           f"{len(fitting)} of {len(rows)} candidates within it")
    return {"chosen_precision": chosen["precision"], "rule": RULE, "why": why,
            "budget": {source[f]: v for f, v in effective.items()},
            "candidates": [{k: v for k, v in r.items() if k not in ("order", "checks")} for r in rows]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", nargs="+", required=True, help="the candidates, in the pair's order")
    ap.add_argument("--reports", nargs="+", type=Path, required=True, help="their validation reports, same order")
    ap.add_argument("--speeds", nargs="*", type=Path, default=[], help="their benchmarks, same order (if any)")
    ap.add_argument("--budget", required=True, help="the pair's budget fields, as JSON")
    ap.add_argument("--default-max-kld", type=float, required=True, help="AUTO_MAX_KLD: when the budget has no MAX_KLD")
    ap.add_argument("--gguf", required=True, help="the pair's output, outputs/<PAIR>/<model>-AUTO.gguf")
    ap.add_argument("--where", default="the pair's YAML", help="the file the budget comes from, for messages")
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args(argv)
    if len(a.reports) != len(a.precisions) or a.speeds and len(a.speeds) != len(a.precisions):
        ap.error("one --reports (and --speeds) file per precision")
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in a.reports]
    speeds = [json.loads(p.read_text(encoding="utf-8")) for p in a.speeds] or [{}] * len(reports)
    figures = {p: {**s, **r} for p, r, s in zip(a.precisions, reports, speeds)}
    try:
        decision = decide(figures, json.loads(a.budget), a.default_max_kld, a.where)
    except NoCandidate as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    i = a.precisions.index(decision["chosen_precision"])
    measured = {k: v for k, v in {**speeds[i], **reports[i]}.items() if k != "gguf"}
    result = {"gguf": a.gguf, **measured, "chosen_candidate": reports[i]["gguf"], **decision}
    write_json(a.output, result)
    print(f"{a.gguf}: {decision['why']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The report's figures and table: size against KL divergence, and KL divergence against generation speed, one
point per output, from the validation JSONs and the benchmarks (.speed.json) and budget checks (.budget.json) beside them.

    python scripts/plot.py outputs/*/*-*[!d].json --speed outputs/*/*.speed.json --plot size_vs_kld.png \
        --speed-plot kld_vs_speed.png --table validation.html
"""
import argparse
import html
import json
import os
from pathlib import Path


# a benchmark's figures that go into its output's row (scripts/speed.py)
SPEED_KEYS = ("prompt_tps", "prompt_tps_sd", "generation_tps", "generation_tps_sd", "n_prompt", "n_gen",
              "repetitions", "n_gpu_layers", "backends")


def load(paths, speed_paths=(), budget_paths=()):
    """A row per validation report, with its output's benchmark figures and budget check (scripts/budget.py)
    merged in when there are."""
    speeds = {}
    for p in speed_paths:
        s = json.loads(Path(p).read_text())
        speeds[s["gguf"]] = {k: s[k] for k in SPEED_KEYS if k in s}
    for p in budget_paths:
        b = json.loads(Path(p).read_text())
        speeds.setdefault(b["gguf"], {}).update(budget_ok=b["budget_ok"], budget_broken=b["broken"])
    rows = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        gguf = Path(r["gguf"])
        model, precision = gguf.stem.rsplit("-", 1)
        if "chosen_precision" in r:  # PRECISION: AUTO (scripts/choose.py): the candidate it chose
            precision = f"AUTO: {r['chosen_precision']}"
            r |= {"budget_ok": True, "budget_broken": []}  # the choice met the budget
        rows.append({"pair": gguf.parent.name, "model": model, **r, "precision": precision,
                     **speeds.get(r["gguf"], {})})
    return sorted(rows, key=lambda r: (r["model"], r["pair"]))


def plot(rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = "osD^v<>P*X"
    pairs = sorted({r["pair"] for r in rows})
    for i, pair in enumerate(pairs):
        pts = [r for r in rows if r["pair"] == pair]
        # a KL divergence of 0 (the full-precision output) cannot sit on a log axis: shown at 1e-6
        ax.scatter([r["file_bytes"] / 1e6 for r in pts], [max(r["kl_divergence"], 1e-6) for r in pts],
                   marker=markers[i % len(markers)], s=60, label=pair)
        for r in pts:
            ax.annotate(f"{r['model']} {r['precision']}", (r["file_bytes"] / 1e6, max(r["kl_divergence"], 1e-6)),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_yscale("log")
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL divergence from full precision (nats/token)")
    ax.set_title("What each precision costs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="pair", fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, metadata={"Software": None})  # no version or date: reruns give the same bytes
    os.replace(tmp, out)


def speed_plot(rows, out: Path) -> None:
    """Quality against speed: KL divergence against generation tokens per second, one point per benchmarked
    output (an empty figure that says so when nothing was benchmarked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = "osD^v<>P*X"
    timed = [r for r in rows if "generation_tps" in r]
    for i, pair in enumerate(sorted({r["pair"] for r in rows})):
        pts = [r for r in timed if r["pair"] == pair]
        if not pts:
            continue
        ax.scatter([r["generation_tps"] for r in pts], [max(r["kl_divergence"], 1e-6) for r in pts],
                   marker=markers[i % len(markers)], s=60, label=pair)
        for r in pts:
            ax.annotate(f"{r['model']} {r['precision']}", (r["generation_tps"], max(r["kl_divergence"], 1e-6)),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
    if timed:
        ax.set_yscale("log")
        ax.legend(title="pair", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no output was benchmarked (BENCHMARK: false)", ha="center", va="center",
                transform=ax.transAxes)
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel("generation speed (tokens/s, llama-bench, on the pair's hardware)")
    ax.set_ylabel("mean KL divergence from full precision (nats/token)")
    ax.set_title("Quality against speed")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, metadata={"Software": None})
    os.replace(tmp, out)


def overview(rows) -> str:
    """The batch at a glance: a row per model, a column per pair; each cell the precision, size and KLD."""
    pairs = sorted({r["pair"] for r in rows})
    cells = {(r["model"], r["pair"]): f"{r['precision']} · {r['file_bytes'] / 1e6:.1f} MB · KLD {r['kl_divergence']:.4f}"
             for r in rows}
    head = "<th>model</th>" + "".join(f"<th>{html.escape(p)}</th>" for p in pairs)
    body = "".join(f"<tr><td>{html.escape(m)}</td>" + "".join(
        f"<td>{html.escape(cells.get((m, p), '—'))}</td>" for p in pairs) + "</tr>"
        for m in sorted({r["model"] for r in rows}))
    return f"<table border='1'><tr>{head}</tr>{body}</table>"


def per_pair(rows) -> str:
    """A table per pair: each output's size, bits per weight, KLD, top-1, speed (— when not benchmarked) and, when
    the pair has a budget, whether the output meets it."""
    def budget(r):
        if "budget_ok" not in r:
            return "—"
        return "within budget" if r["budget_ok"] else "BROKEN: " + "; ".join(r["budget_broken"])

    def speed(r, key):
        if key not in r:
            return "—"
        return f"{r[key]:.1f} ± {r[key + '_sd']:.1f}" if key + "_sd" in r else f"{r[key]:.1f}"

    parts = []
    for pair in sorted({r["pair"] for r in rows}):
        mine = [r for r in rows if r["pair"] == pair]
        budgeted = any("budget_ok" in r for r in mine)  # a budget column for the pairs that have a budget
        columns = ("model", "precision", "size (MB)", "bits per weight", "KLD", "top-1", "prompt t/s",
                   "generation t/s") + (("budget",) if budgeted else ())
        head = "".join(f"<th>{c}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                r["model"], r["precision"], f"{r['file_bytes'] / 1e6:.1f}", f"{r['bits_per_weight']:.2f}",
                f"{r['kl_divergence']:.4f}", f"{100 * r['top1_agreement']:.1f}%", speed(r, "prompt_tps"),
                speed(r, "generation_tps")) + ((budget(r),) if budgeted else ())) + "</tr>"
            for r in mine)
        parts.append(f"<h4>{html.escape(pair)}</h4><table border='1'><tr>{head}</tr>{body}</table>")
    return "".join(parts)


def table(rows, out: Path) -> None:
    cols = ["pair", "model", "precision", "file_bytes", "bits_per_weight", "kl_divergence", "top1_agreement",
            "perplexity", "prompt_tps", "generation_tps", "loaded", "wall_seconds", "llama_cpp_build", "converter"]
    head = "".join(f"<th>{c}</th>" for c in cols + ["tensors_by_type"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c)))}</td>" for c in cols) +
                   f"<td>{html.escape(json.dumps(r['tensors_by_type']))}</td></tr>" for r in rows)
    out.write_text(f"<html><body><h3>Models × pairs</h3>{overview(rows)}<h3>Each pair</h3>{per_pair(rows)}"
                   f"<h3>Every output</h3>"
                   f"<table border='1'><tr>{head}</tr>{body}</table></body></html>\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--plot", type=Path, required=True)
    ap.add_argument("--table", type=Path, required=True)
    ap.add_argument("--speed", nargs="*", default=[], help="the outputs' benchmarks (.speed.json)")
    ap.add_argument("--speed-plot", type=Path, required=True)
    ap.add_argument("--budget", nargs="*", default=[], help="the outputs' budget checks (.budget.json)")
    a = ap.parse_args(argv)
    rows = load(a.reports, a.speed, a.budget)
    plot(rows, a.plot)
    speed_plot(rows, a.speed_plot)
    table(rows, a.table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

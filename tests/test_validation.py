"""Validation reports from llama.cpp, checksums, the end-of-run summary, and reproducible builds."""
from __future__ import annotations

import hashlib
import json

import pytest
from conftest import configured_pairs, edit_yaml, snakemake

pytestmark = pytest.mark.workflow
OUTPUTS = configured_pairs()  # {pair: PRECISION} of the tests' configuration (tests/configurations/)
PAIR_OF = {precision: pair for pair, precision in OUTPUTS.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from conftest import copy_workflow

    wf = copy_workflow(tmp_path_factory.mktemp("validation") / "wf")
    run = snakemake(wf)
    return wf, run


def report(wf, pair):
    return json.loads((wf / f"outputs/{pair}/tiny-gpt2-{OUTPUTS[pair]}.json").read_text())


def speed(wf, pair):
    return json.loads((wf / f"outputs/{pair}/tiny-gpt2-{OUTPUTS[pair]}.speed.json").read_text())


def test_every_output_has_its_speed_on_the_tiny_model_in_seconds(built):
    wf, run = built
    for pair in OUTPUTS:
        s = speed(wf, pair)
        assert s["prompt_tps"] > 0 and s["generation_tps"] > 0 and s["repetitions"] >= 3
        assert s["wall_seconds"] < 10  # the default sizes keep the tiny model's benchmark short
    assert run.jobs()["speed"] == len(OUTPUTS)


def test_every_output_has_a_report_from_llama_cpp(built):
    wf, _ = built
    for pair, precision in OUTPUTS.items():
        r = report(wf, pair)
        gguf_path = wf / f"outputs/{pair}/tiny-gpt2-{precision}.gguf"
        assert r["loaded"] is True and r["file_bytes"] == gguf_path.stat().st_size
        assert r["parameters"] == 1907712 and sum(r["tensors_by_type"].values()) == 28
        assert r["llama_cpp_build"] == "b11312 (0c1e570)" and r["wall_seconds"] > 0
        assert r["perplexity"] > 1 and 0 <= r["top1_agreement"] <= 1


def test_f16_against_itself_and_fewer_bits_cost_more(built):
    wf, _ = built
    f16, q8, q4km = (report(wf, PAIR_OF[q]) for q in ("FP16", "Q8_0", "Q4_K_M"))
    assert f16["kl_divergence"] < 1e-5 and f16["top1_agreement"] == 1.0
    assert f16["tensors_by_type"] == {"F16": 9, "F32": 19}
    assert 0 < q8["kl_divergence"] < q4km["kl_divergence"]
    assert q4km["bits_per_weight"] < q8["bits_per_weight"] < f16["bits_per_weight"]
    assert q4km["tensors_by_type"]["Q4_K"] > 0


def test_checksums_and_summary(built):
    wf, run = built
    for pair, precision in OUTPUTS.items():
        name = f"tiny-gpt2-{precision}.gguf"
        digest = hashlib.sha256((wf / f"outputs/{pair}/{name}").read_bytes()).hexdigest()
        assert (wf / f"outputs/{pair}/{name}.sha256").read_text() == f"{digest}  {name}\n"
    for pair, precision in OUTPUTS.items():
        r = report(wf, pair)
        assert (f"outputs/{pair}/tiny-gpt2-{precision}.gguf: {r['file_bytes'] / 1e6:.1f} MB, "
                f"{r['bits_per_weight']:.2f} bpw, KLD {r['kl_divergence']:.4f}") in run.output
        s = speed(wf, pair)
        assert (f"converted by {r['converter']}, pp {s['prompt_tps']:.1f} t/s, "
                f"tg {s['generation_tps']:.1f} t/s\n") in run.output


def test_validation_can_be_switched_off(workflow):
    edit_yaml(workflow / "configurations/converter_args.yaml", lambda d: d.update(VALIDATE=False))
    jobs = snakemake(workflow, "-n").jobs()
    assert "validate" not in jobs and "kld_base" not in jobs and jobs["checksum"] == len(OUTPUTS)


def test_two_clean_builds_are_byte_identical(built, tmp_path):
    from conftest import copy_workflow

    wf, _ = built
    again = copy_workflow(tmp_path / "again")
    snakemake(again, *[f"outputs/{p}/tiny-gpt2-{q}.gguf.sha256" for p, q in OUTPUTS.items()])
    for pair, precision in OUTPUTS.items():
        sums = [(w / f"outputs/{pair}/tiny-gpt2-{precision}.gguf.sha256").read_text() for w in (wf, again)]
        assert sums[0] == sums[1], pair


def test_each_gguf_says_where_it_came_from(built):
    import gguf
    from conftest import ROOT

    wf, _ = built
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ROOT / "models/tiny-gpt2").iterdir()
             if p.name != "README.md"}
    source = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    for pair, precision in OUTPUTS.items():
        fields = gguf.GGUFReader(wf / f"outputs/{pair}/tiny-gpt2-{precision}.gguf").fields
        kv = {k: fields[k].contents() for k in fields if k.startswith("hf2gguf.")}
        assert kv["hf2gguf.source.sha256"] == source and kv["hf2gguf.version"] == "0.1.0"
        assert kv["hf2gguf.precision"] == {"FP16": "F16"}.get(precision, precision)
        if precision.startswith("Q4"):  # made by llama-quantize
            assert kv["hf2gguf.llama_cpp"] == "b11312-0c1e570"


def test_the_html_report_has_the_plot_table_and_dag(built, tmp_path):
    import base64

    wf, _ = built
    plot = wf / "outputs/report/size_vs_kld.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (wf / "outputs/report/validation.html").read_text()
    overview, rest = page.split("<h3>Each pair</h3>")
    each_pair, table = rest.split("<h3>Every output</h3>")
    assert overview.count("<tr>") == 1 + 1  # the batch at a glance: a header and one model
    # a table per pair, with its output's size, bits per weight, KLD, top-1 and both speeds
    assert each_pair.count("<table") == len(OUTPUTS) and each_pair.count("<tr>") == 2 * len(OUTPUTS)
    assert "generation t/s" in each_pair and "—" not in each_pair
    for pair in OUTPUTS:
        s = speed(wf, pair)
        assert f"<td>{s['generation_tps']:.1f} ± {s['generation_tps_sd']:.1f}</td>" in each_pair, pair
        assert f"<td>{s['prompt_tps']}</td>" in table, pair
    assert (wf / "outputs/report/kld_vs_speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table.count("<tr>") == len(OUTPUTS) + 1 and "Q4_K_M" in table and "b11312 (0c1e570)" in table
    snakemake(wf, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    assert base64.b64encode(plot.read_bytes()).decode()[200:400] in html  # the plot itself is embedded
    assert "File size against the mean KL divergence" in html  # its caption
    assert "Quality against speed" in html  # the second plot's caption
    assert "validation.html" in html and all(rule in html for rule in ("kld_base", "validate", "quantize"))


def test_our_comparison_agrees_with_llama_cpps_own_summary(built):
    """llama-perplexity --kl-divergence prints the same statistics itself, when its logger gets to flush them."""
    import re
    import subprocess

    wf, _ = built
    tool = next((wf / "outputs/toolchain").glob("*/bin/llama-perplexity"))
    pair = PAIR_OF["Q4_K_M"]
    r = report(wf, pair)
    for _ in range(10):
        out = subprocess.run([tool, "-m", wf / f"outputs/{pair}/tiny-gpt2-Q4_K_M.gguf", "--kl-divergence-base",
                              wf / "outputs/validation/tiny-gpt2.kld", "--kl-divergence", "-c", "128", "-b", "128"],
                             capture_output=True, text=True)
        kld, top = re.search(r"Mean\s+KLD:\s*([0-9.]+)", out.stdout), re.search(r"Same top p:\s*([0-9.]+)", out.stdout)
        if kld and top:
            break
    assert kld and top, "llama-perplexity never printed its summary"
    assert abs(float(kld.group(1)) - r["kl_divergence"]) < 2e-4
    assert abs(float(top.group(1)) / 100 - r["top1_agreement"]) < 2e-3

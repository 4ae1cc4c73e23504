"""Device budgets (issue: speed on the target): a pair's MAX_FILE_SIZE, MAX_KLD, MIN_TOP1, MIN_PROMPT_TPS and
MIN_GENERATION_TPS checked against each output's size, validation and benchmark (scripts/budget.py, rule budget);
reported in the summary, the .budget.json and the report, and failing the run with ENFORCE_BUDGETS."""
from __future__ import annotations

import html
import json
import os

import pytest
from conftest import configured_pairs, copy_workflow, edit_yaml, pair_yamls, snakemake

import budget
import pipeline

PAIRS = configured_pairs()
PAIR = next(p for p, q in PAIRS.items() if q == "Q4_K_M")  # KLD about 0.02 on tiny-gpt2
STEM = f"outputs/{PAIR}/tiny-gpt2-{PAIRS[PAIR]}"


def yaml_of(wf, pair=PAIR):
    return wf / "configurations" / pair / f"converter_args_{pair.lower()}.yaml"


def test_the_fields_are_the_pipelines_and_the_schemas():
    import yaml
    from conftest import ROOT

    schema = yaml.safe_load((ROOT / "rules/schemas/pair.schema.yaml").read_text())
    assert set(budget.BUDGET_FIELDS) == set(pipeline.BUDGETS) and set(pipeline.BUDGETS) <= set(schema["properties"])
    assert not any(pipeline.has_budget(cfg) for cfg in pair_yamls().values())  # the tests' pairs set none


@pytest.mark.parametrize("value, expected", [("6G", 6 * 2**30), ("500M", 500 * 2**20), ("1.5K", 1536), (1000, 1000),
                                             ("7", 7), ("2T", 2 * 2**40)])
def test_sizes(value, expected):
    assert budget.size_bytes(value) == expected


def test_checks_and_their_words():
    figures = {"file_bytes": 3 * 2**20, "kl_divergence": 0.02, "top1_agreement": 0.7, "prompt_tps": 100.0,
               "generation_tps": 10.0}
    checks = budget.check({"MAX_FILE_SIZE": "2M", "MAX_KLD": 0.05, "MIN_TOP1": 0.7, "MIN_GENERATION_TPS": 20}, figures)
    assert [(c["field"], c["ok"]) for c in checks] == [
        ("MAX_FILE_SIZE", False), ("MAX_KLD", True), ("MIN_TOP1", True), ("MIN_GENERATION_TPS", False)]
    assert [budget.describe(c) for c in checks if not c["ok"]] == [
        "file_bytes 3.0 MiB > MAX_FILE_SIZE 2.0 MiB", "generation_tps 10 < MIN_GENERATION_TPS 20"]
    assert budget.needs({"MAX_FILE_SIZE": 1}) == set() and budget.needs({"MAX_KLD": 1, "MIN_PROMPT_TPS": 1}) == {
        "report", "speed"}


@pytest.mark.parametrize("fields, setting, message", [
    ({"MAX_KLD": 0.1}, {"VALIDATE": False}, "VALIDATE is false"),
    ({"MIN_GENERATION_TPS": 5}, {"BENCHMARK": False}, "BENCHMARK is false"),
])
def test_a_budget_without_its_measurement_is_refused_at_start_up(tmp_path, fields, setting, message):
    wf = copy_workflow(tmp_path / "wf")
    edit_yaml(yaml_of(wf), lambda d: d.update(fields))
    edit_yaml(wf / "configurations/converter_args.yaml", lambda d: d.update(setting))
    run = snakemake(wf, "-n", check=False)
    assert run.returncode != 0 and f"{yaml_of(wf).relative_to(wf)}: " in run.output and message in run.output
    assert not (wf / "outputs").exists() or not list((wf / "outputs").rglob("*.gguf"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("budget") / "wf")
    edit_yaml(yaml_of(wf), lambda d: d.update(MAX_KLD=0.001, MAX_FILE_SIZE="1G", MIN_GENERATION_TPS=1))
    run = snakemake(wf)
    return wf, run


def test_a_broken_budget_is_reported_in_the_json_the_summary_and_the_report(built):
    wf, run = built
    report = json.loads((wf / f"{STEM}.json").read_text())  # the validation: an independent measurement
    check = json.loads((wf / f"{STEM}.budget.json").read_text())
    by_field = {c["field"]: c for c in check["checks"]}
    assert by_field["MAX_KLD"]["value"] == report["kl_divergence"] > 0.001 and not by_field["MAX_KLD"]["ok"]
    assert by_field["MAX_FILE_SIZE"]["value"] == os.path.getsize(wf / f"{STEM}.gguf") and by_field["MAX_FILE_SIZE"]["ok"]
    speed = json.loads((wf / f"{STEM}.speed.json").read_text())
    assert by_field["MIN_GENERATION_TPS"]["value"] == speed["generation_tps"] and by_field["MIN_GENERATION_TPS"]["ok"]
    assert check["budget_ok"] is False and check["broken"] == [f"kl_divergence {report['kl_divergence']:.4g} > MAX_KLD 0.001"]
    line = next(line for line in run.stderr.splitlines() if line.startswith(f"{STEM}.gguf: "))
    assert line.endswith(f"; BUDGET BROKEN: {check['broken'][0]}"), line
    assert not list((wf / "outputs").glob("*/*.budget.json"))[1:], "only the pair with a budget is checked"
    table = (wf / "outputs/report/validation.html").read_text()
    assert html.escape(f"BROKEN: {check['broken'][0]}") in table


def test_a_new_budget_reruns_only_the_checks(built):
    wf, _ = built
    edit_yaml(yaml_of(wf), lambda d: d.update(MAX_KLD=0.5))
    run = snakemake(wf)
    assert run.jobs() == {"budget": 1, "plot": 1}, run.output[-3000:]
    assert json.loads((wf / f"{STEM}.budget.json").read_text())["budget_ok"] is True
    assert "; within budget" in next(line for line in run.stderr.splitlines() if line.startswith(f"{STEM}.gguf: "))


def test_enforced_budgets_fail_the_run_and_say_why(built):
    wf, _ = built
    edit_yaml(yaml_of(wf), lambda d: d.update(MAX_KLD=0.001))
    edit_yaml(wf / "configurations/converter_args.yaml", lambda d: d.update(ENFORCE_BUDGETS=True))
    run = snakemake(wf, check=False)
    assert run.returncode != 0 and run.jobs() == {"budget": 1, "plot": 1}
    assert "FAILED rule budget" in run.stderr and not (wf / f"{STEM}.budget.json").exists()
    log = (wf / f"outputs/logs/budget/{PAIR}/tiny-gpt2-{PAIRS[PAIR]}.log").read_text()
    assert f"breaks the budget of configurations/{PAIR}/" in log and "> MAX_KLD 0.001" in log
    assert "ENFORCE_BUDGETS is true" in log
    assert (wf / f"{STEM}.gguf").exists()  # the file itself stays: it is valid, only over budget

"""PRECISION: AUTO (issue 18): a pair's candidates made once per model, validated and benchmarked on the pair's
hardware, and the one its budget chooses (scripts/choose.py, checkpoint choose) copied to <model>-AUTO.gguf.

The expected choices come from independent facts: the validation JSONs the validate rule wrote for each candidate
and the candidates' sizes from os.stat, never from scripts/choose.py."""
from __future__ import annotations

import hashlib
import html
import json
import os

import pytest
from conftest import configured_pairs, copy_workflow, edit_yaml, snakemake

import choose
import pipeline

PAIRS = configured_pairs()
PAIR = next(p for p, q in PAIRS.items() if q == "Q4_K_M")  # made AUTO here
# a short ladder (no imatrix type, to keep the test fast); Q4_0 and Q8_0 are also the precisions of fixed pairs
LADDER = ["Q8_0", "Q6_K", "Q4_K_M", "Q4_0"]
SHARED = {p: q for p, q in PAIRS.items() if q in LADDER and p != PAIR}
MODEL = "tiny-gpt2"
STEM = f"outputs/{PAIR}/{MODEL}-AUTO"
MEASURED = ("candidate", "quantize", "validate", "validate_candidate", "speed", "speed_candidate", "convert",
            "kld_base", "imatrix")


def yaml_of(wf, pair=PAIR):
    return wf / "configurations" / pair / f"converter_args_{pair.lower()}.yaml"


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the decision, a pure function ---------------------------------------------------------------------------
FIGURES = {  # made-up measurements, in ladder order
    "Q8_0": {"file_bytes": 900, "kl_divergence": 0.0003, "top1_agreement": 0.97, "generation_tps": 10.0},
    "Q6_K": {"file_bytes": 700, "kl_divergence": 0.002, "top1_agreement": 0.9, "generation_tps": 12.0},
    "Q4_K_M": {"file_bytes": 500, "kl_divergence": 0.02, "top1_agreement": 0.7, "generation_tps": 15.0},
    "Q4_0": {"file_bytes": 450, "kl_divergence": 0.03, "top1_agreement": 0.6, "generation_tps": 16.0},
}


@pytest.mark.parametrize("budget, default, expected", [
    ({"MAX_KLD": 0.01}, 0.05, "Q6_K"),  # the smallest under the KLD
    ({"MAX_KLD": 0.001}, 0.05, "Q8_0"),  # tighter: a larger precision
    ({}, 0.05, "Q4_0"),  # no budget: the smallest under AUTO_MAX_KLD
    ({}, 0.025, "Q4_K_M"),
    ({"MAX_FILE_SIZE": 800}, 0.05, "Q4_0"),  # size alone: still held to AUTO_MAX_KLD
    ({"MAX_FILE_SIZE": 800, "MIN_TOP1": 0.8}, 0.05, "Q6_K"),
    ({"MIN_GENERATION_TPS": 15.5}, 0.05, "Q4_0"),
    ({"MAX_KLD": 0.5}, 0.0, "Q4_0"),  # MAX_KLD replaces AUTO_MAX_KLD
])
def test_the_smallest_file_within_every_budget_is_chosen(budget, default, expected):
    decision = choose.decide(FIGURES, budget, default)
    assert decision["chosen_precision"] == expected
    assert [c["precision"] for c in decision["candidates"]] == list(FIGURES)
    fitting = {c["precision"] for c in decision["candidates"] if c["ok"]}
    assert expected in fitting and all(FIGURES[p]["file_bytes"] >= FIGURES[expected]["file_bytes"] for p in fitting)
    assert ("AUTO_MAX_KLD" in decision["budget"]) == ("MAX_KLD" not in budget)


def test_ties_go_to_the_lower_kld_then_the_earlier_candidate():
    figures = {"A": {"file_bytes": 5, "kl_divergence": 0.02}, "B": {"file_bytes": 5, "kl_divergence": 0.01},
               "C": {"file_bytes": 5, "kl_divergence": 0.01}}
    assert choose.decide(figures, {}, 0.05)["chosen_precision"] == "B"


def test_no_fitting_candidate_names_the_closest_and_what_each_breaks():
    with pytest.raises(choose.NoCandidate) as e:
        choose.decide(FIGURES, {"MAX_KLD": 0.0001, "MAX_FILE_SIZE": 600}, 0.05, "configurations/X/x.yaml")
    message = str(e.value)
    lines = message.splitlines()
    assert lines[0].startswith("configurations/X/x.yaml: no candidate of PRECISION: AUTO meets the budget")
    # Q4_K_M and Q4_0 break one budget, Q8_0 and Q6_K two; then the nearer to the limits (relative excess) first
    assert lines[1] == "  Q4_K_M: kl_divergence 0.02 > MAX_KLD 0.0001"
    assert lines[2] == "  Q4_0: kl_divergence 0.03 > MAX_KLD 0.0001"
    assert lines[3].startswith("  Q8_0: ") and "file_bytes" in lines[3] and "MAX_FILE_SIZE" in lines[3]
    assert len(lines) == 2 + choose.CLOSEST
    assert "AUTO_CANDIDATES" in lines[-1]


def test_the_default_floor_is_named_as_such():
    with pytest.raises(choose.NoCandidate, match=r"Q8_0: kl_divergence 0\.0003 > AUTO_MAX_KLD 0\.0001"):
        choose.decide(FIGURES, {}, 0.0001)


# --- configuration ---------------------------------------------------------------------------------------------
def test_default_outputs_of_an_auto_pair():
    pairs = {"A_LLM_LLAMA": {"PRECISION": "AUTO", "MAX_KLD": 0.1}, "B_LLM_LLAMA": {"PRECISION": "Q4_0"}}
    outputs = pipeline.default_outputs(pairs, ["m"], "out", True, True)
    assert [p for p in outputs if "/A_LLM_LLAMA/" in p] == [
        "out/A_LLM_LLAMA/m-AUTO.gguf", "out/A_LLM_LLAMA/m-AUTO.gguf.sha256", "out/A_LLM_LLAMA/m-AUTO.json"]


def test_a_fixed_pair_shares_a_candidate_only_when_its_file_would_be_the_same():
    pairs = {"A": {"PRECISION": "AUTO", "AUTO_CANDIDATES": ["Q8_0", "Q4_0", "IQ2_M"]}}
    assert pipeline.shares_candidate(pairs, {"PRECISION": "Q4_0"}, "Q4_0")
    assert pipeline.shares_candidate(pairs, {"PRECISION": "IQ2_M"}, "IQ2_M")  # both use the importance matrix
    assert not pipeline.shares_candidate(pairs, {"PRECISION": "Q4_0", "PURE": True}, "Q4_0")
    assert not pipeline.shares_candidate(pairs, {"PRECISION": "Q4_0", "IMATRIX": True}, "Q4_0")
    assert not pipeline.shares_candidate(pairs, {"PRECISION": "Q6_K"}, "Q6_K")


@pytest.mark.parametrize("fields, setting, message", [
    ({"AUTO_CANDIDATES": ["Q4_0", "Q9_X"]}, {}, "field AUTO_CANDIDATES: unknown precision 'Q9_X'"),
    ({"PURE": True}, {}, "cannot set PURE"),
    ({"SPLIT_MAX_SIZE": "2G"}, {}, "cannot set SPLIT_MAX_SIZE"),
    ({}, {"VALIDATE": False}, "PRECISION: AUTO chooses among its candidates by their validation"),
])
def test_a_bad_auto_pair_is_refused_at_start_up(tmp_path, fields, setting, message):
    wf = copy_workflow(tmp_path / "wf")
    edit_yaml(yaml_of(wf), lambda d: d.update(PRECISION="AUTO", **fields))
    edit_yaml(wf / "configurations/converter_args.yaml", lambda d: d.update(setting))
    run = snakemake(wf, "-n", check=False)
    assert run.returncode != 0 and message in run.output, run.output[-3000:]


# --- the workflow on the tiny model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("auto") / "wf")
    edit_yaml(yaml_of(wf), lambda d: d.update(PRECISION="AUTO", AUTO_CANDIDATES=LADDER, MAX_KLD=0.01))
    return wf, snakemake(wf)


def measured(wf):
    """{precision: (file size by os.stat, KLD from the validate rule's JSON)} of each candidate."""
    out = {}
    for p in LADDER:
        report = json.loads((wf / f"outputs/{PAIR}/auto/{MODEL}-{p}.json").read_text())
        assert report["gguf"] == f"outputs/candidates/{MODEL}-{p}.gguf" and report["loaded"] is True
        out[p] = (os.stat(wf / report["gguf"]).st_size, report["kl_divergence"])
    return out


def expected_choice(wf, max_kld):
    fitting = {p: size for p, (size, kld) in measured(wf).items() if kld <= max_kld}
    return min(fitting, key=fitting.get) if fitting else None


def test_auto_picks_the_smallest_candidate_within_the_budget(built):
    wf, run = built
    expected = expected_choice(wf, 0.01)
    assert expected == "Q6_K"  # tiny-gpt2: Q8_0 and Q6_K are under 0.01, Q4_K_M and Q4_0 above
    decision = json.loads((wf / f"{STEM}.json").read_text())
    assert decision["chosen_precision"] == expected and decision["gguf"] == f"{STEM}.gguf"
    assert decision["chosen_candidate"] == f"outputs/candidates/{MODEL}-{expected}.gguf"
    assert [c["precision"] for c in decision["candidates"]] == LADDER
    sizes = measured(wf)
    for c in decision["candidates"]:
        assert (c["file_bytes"], c["kl_divergence"]) == sizes[c["precision"]]
        assert c["ok"] == (sizes[c["precision"]][1] <= 0.01) and bool(c["broken"]) != c["ok"]
    speed = json.loads((wf / f"outputs/{PAIR}/auto/{MODEL}-{expected}.speed.json").read_text())
    assert decision["generation_tps"] == speed["generation_tps"]  # measured on the pair, for the chosen one
    line = next(line for line in run.stderr.splitlines() if line.startswith(f"{STEM}.gguf: "))
    assert f"KLD {sizes[expected][1]:.4f}" in line and f"; AUTO chose {expected}: " in line, line
    table = (wf / "outputs/report/validation.html").read_text()
    assert html.escape(f"AUTO: {expected}") in table


def test_the_auto_gguf_is_the_candidates_file_and_loads_in_llama_cpp(built):
    wf, _ = built
    choice = json.loads((wf / f"{STEM}.json").read_text())["chosen_precision"]
    auto = wf / f"{STEM}.gguf"
    assert sha256(auto) == sha256(wf / f"outputs/candidates/{MODEL}-{choice}.gguf")
    assert (wf / f"{STEM}.gguf.sha256").read_text().split() == [sha256(auto), auto.name]
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(str(auto), n_ctx=64, n_threads=2, verbose=False)
    tokens = model.tokenize(b"The quick brown fox")
    model.eval(tokens)
    assert model.n_vocab() > 0 and model.n_tokens == len(tokens)


def test_each_candidate_is_made_once_and_fixed_pairs_share_it(built):
    wf, run = built
    jobs = run.jobs()
    assert jobs["candidate"] == len(LADDER) and jobs["validate_candidate"] == jobs["speed_candidate"] == len(LADDER)
    assert jobs["quantize"] == len(PAIRS) - 1 and jobs["choose"] == jobs["auto_output"] == 1
    assert SHARED, "the test configuration has fixed pairs at precisions of the ladder"
    for pair, precision in SHARED.items():  # a copy of the candidate, not a second llama-quantize
        log = (wf / f"outputs/logs/quantize/{pair}/{MODEL}-{precision}.log").read_text()
        assert "running: " not in log and f"candidates/{MODEL}-{precision}.gguf" in log
        assert sha256(wf / f"outputs/{pair}/{MODEL}-{precision}.gguf") == sha256(
            wf / f"outputs/candidates/{MODEL}-{precision}.gguf")


def test_a_budget_that_keeps_the_choice_only_decides_again(built):
    wf, _ = built
    before = sha256(wf / f"{STEM}.gguf")
    edit_yaml(yaml_of(wf), lambda d: d.update(MAX_KLD=0.009))
    run = snakemake(wf)
    # the jobs after a checkpoint that reruns run too (Snakemake): the chosen file is copied again, the same
    assert run.jobs() == {"choose": 1, "auto_output": 1, "checksum": 1, "plot": 1}, run.output[-3000:]
    assert sha256(wf / f"{STEM}.gguf") == before


def test_a_tighter_budget_moves_to_a_larger_precision_without_requantizing(built):
    wf, _ = built
    before = json.loads((wf / f"{STEM}.json").read_text())["chosen_precision"]
    edit_yaml(yaml_of(wf), lambda d: d.update(MAX_KLD=0.001))
    run = snakemake(wf)
    jobs = run.jobs()
    assert not set(jobs) & set(MEASURED), jobs
    assert jobs == {"choose": 1, "auto_output": 1, "checksum": 1, "plot": 1}, jobs
    expected = expected_choice(wf, 0.001)
    assert expected == "Q8_0" and expected != before
    sizes = measured(wf)
    assert sizes[expected][0] > sizes[before][0]  # a larger precision
    assert json.loads((wf / f"{STEM}.json").read_text())["chosen_precision"] == expected
    assert sha256(wf / f"{STEM}.gguf") == sha256(wf / f"outputs/candidates/{MODEL}-{expected}.gguf")


def test_an_impossible_budget_fails_with_the_closest_candidates(built):
    wf, _ = built
    edit_yaml(yaml_of(wf), lambda d: d.update(MAX_KLD=0.00001))
    run = snakemake(wf, check=False)
    assert run.returncode != 0 and not set(run.jobs()) & set(MEASURED)
    assert "FAILED rule choose" in run.stderr and not (wf / f"{STEM}.json").exists()
    sizes = measured(wf)
    closest = sorted(LADDER, key=lambda p: sizes[p][1])[:choose.CLOSEST]  # one broken budget each: by KLD
    assert f"{yaml_of(wf).relative_to(wf)}: no candidate of PRECISION: AUTO meets the budget" in run.output
    lines = [line.strip() for line in run.output.splitlines() if line.startswith("  ") and "> MAX_KLD 1e-05" in line]
    assert [line.split(":")[0] for line in lines[:len(closest)]] == closest, run.output[-3000:]
    assert f"{closest[0]}: kl_divergence {sizes[closest[0]][1]:.4g} > MAX_KLD 1e-05" in lines[0]


def test_a_new_candidate_makes_only_that_candidate(built):
    wf, _ = built
    edit_yaml(yaml_of(wf), lambda d: d.update(MAX_KLD=0.01, AUTO_CANDIDATES=LADDER + ["Q5_K_M"]))
    run = snakemake(wf)
    jobs = run.jobs()
    assert {k: jobs.get(k, 0) for k in ("candidate", "validate_candidate", "speed_candidate", "quantize",
                                        "validate", "speed")} == {
        "candidate": 1, "validate_candidate": 1, "speed_candidate": 1, "quantize": 0, "validate": 0, "speed": 0}
    assert jobs["choose"] == 1

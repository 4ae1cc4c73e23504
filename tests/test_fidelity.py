"""Outputs against independent references: llama.cpp (the llama-cpp-python binding, built from the same pinned
sdist) runs every GGUF, and its logits and token ids are compared with what transformers recorded for the same
model (tests/fixtures, made by scripts/record_reference_logits.py)."""
from __future__ import annotations

import hashlib
import json
import subprocess

import llama_cpp  # the reference runtime: a test dependency, built by .ci/run from the pinned sdist
import numpy as np
import pytest
from conftest import ROOT, TINY

from hf2gguf.convert import convert

pytestmark = pytest.mark.fidelity

REF = np.load(ROOT / "tests" / "fixtures" / "tiny-gpt2.npz")
TOKENS = json.loads((ROOT / "tests" / "fixtures" / "tiny-gpt2-tokens.json").read_text(encoding="utf-8"))
IDS = REF["input_ids"].tolist()
# KL divergence (nats/token) from the F16 output's next-token distribution; measured on tiny-gpt2, with margin.
MAX_KL = {"BF16": 0.002, "Q8_0": 0.003, "Q6_K": 0.01, "Q5_K_M": 0.03, "Q5_0": 0.04, "Q4_K_M": 0.08, "Q4_0": 0.12,
          "IQ4_XS": 0.1, "Q3_K_M": 0.1, "Q2_K": 0.4}


def test_fixture_matches_the_shipped_model():
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(TINY.glob("*.safetensors")))).hexdigest()
    assert str(REF["weights_sha256"]) == TOKENS["weights_sha256"] == digest, \
        "models/tiny-gpt2 changed: run scripts/record_reference_logits.py again"


def load(path):
    # F32 K/V cache (type 0): the default F16 cache adds about 1e-3 of error
    return llama_cpp.Llama(str(path), logits_all=True, n_ctx=64, n_threads=2, verbose=False, type_k=0, type_v=0)


def logits(path) -> np.ndarray:
    m = load(path)
    m.eval(IDS)
    return np.array(m.scores[: len(IDS)], dtype=np.float64)


def kl(p_logits, q_logits) -> float:
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, llama_quantize):
    d = tmp_path_factory.mktemp("fidelity")
    out = {t: convert(TINY, d / f"{t}.gguf", t, log=lambda m: None) for t in ("F32", "F16", "BF16", "Q8_0")}
    for q in ("Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K"):
        out[q] = d / f"{q}.gguf"
        subprocess.run([llama_quantize, out["F16"], out[q], q, "2"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def f16_logits(ggufs):
    return logits(ggufs["F16"])


@pytest.mark.parametrize("outtype", ["F32", "F16"])
def test_full_precision_logits_match_transformers(ggufs, outtype):
    diff = np.abs(logits(ggufs[outtype]) - REF["logits"]).max()
    assert diff <= 5e-3, f"{outtype}: max |logit difference| {diff:.2e} against transformers"


@pytest.mark.parametrize("precision", list(MAX_KL))
def test_quantized_outputs_stay_close_to_f16(ggufs, f16_logits, precision):
    q = logits(ggufs[precision])
    assert kl(f16_logits, q) <= MAX_KL[precision]
    if precision in ("BF16", "Q8_0"):
        assert (q.argmax(-1) == f16_logits.argmax(-1)).mean() >= 0.95


def test_fewer_bits_lose_more(ggufs, f16_logits):
    kls = [kl(f16_logits, logits(ggufs[p])) for p in ("Q8_0", "Q4_K_M", "Q2_K")]
    assert kls == sorted(kls) and kls[0] < kls[-1] / 10


@pytest.mark.parametrize("case", TOKENS["cases"], ids=lambda c: repr(c["text"])[:30])
def test_llama_cpp_tokenizes_like_transformers(ggufs, case):
    m = llama_cpp.Llama(str(ggufs["Q8_0"]), vocab_only=True, verbose=False)
    assert m.tokenize(case["text"].encode(), add_bos=False, special=True) == case["ids"]


def test_known_gpt2_token_ids(ggufs):
    """Independent of the recorded fixture: GPT-2 itself tokenizes " world" as 995, "," as 11."""
    m = llama_cpp.Llama(str(ggufs["F16"]), vocab_only=True, verbose=False)
    assert m.tokenize(b" world", add_bos=False) == [995]
    assert m.tokenize(b",", add_bos=False) == [11]
    assert m.token_eos() == 999

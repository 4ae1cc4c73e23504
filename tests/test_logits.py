"""llama.cpp's logits on our F32 GGUF of every fixture (tests/generators/models.py) against transformers' logits
for the same token ids, recorded when the fixture was built, on the weights as stored.

llama.cpp runs through llama-cpp-python, built from the same pinned sdist, with an F32 KV cache. Tolerances
(max |Δ| over all positions and the whole vocabulary): 1e-4 for SiLU models; 5e-3 for GELU models (GPT-2,
Gemma, Gemma 2), because llama.cpp's CPU GELU uses an fp16 lookup table.

The same comparison on llama.cpp's own converter's output calibrates the tolerances, and deliberately broken
conversions (an output norm of 1, Q/K left in Hugging Face's rotary order, Gemma norms without +1, Qwen2 biases
dropped) prove that the comparison fails for the bugs it is meant to catch.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import llama_cpp  # the reference runtime, built by .ci/run from the pinned sdist
import numpy as np
import pytest
from reference import VARIANTS, ensure_models, ensure_reference, our_gguf, read_gguf, selected_variants

pytestmark = [pytest.mark.fidelity, pytest.mark.slow]

SILU_TOLERANCE = 1e-4
GELU_TOLERANCE = 5e-3


def tolerance(variant: str) -> float:
    if VARIANTS[variant].tolerance is not None:
        return VARIANTS[variant].tolerance
    return GELU_TOLERANCE if VARIANTS[variant].gelu else SILU_TOLERANCE


def llama_cpp_logits(path, ids: list[int]) -> np.ndarray:
    # F32 K/V cache (type 0): the default F16 cache adds about 1e-3 of error
    m = llama_cpp.Llama(str(path), logits_all=True, n_ctx=64, n_threads=2, verbose=False, type_k=0, type_v=0)
    try:
        m.eval(ids)
        return np.array(m.scores[: len(ids)], dtype=np.float64)
    finally:
        m.close()


@pytest.fixture(scope="session")
def models(request):
    return ensure_models(selected_variants(request.session), log=print)


def transformers_logits(folder) -> tuple[list[int], np.ndarray]:
    recorded = np.load(folder / "reference_logits.npz")
    return recorded["input_ids"].tolist(), recorded["logits"].astype(np.float64)


def max_difference(path, folder) -> float:
    ids, expected = transformers_logits(folder)
    return float(np.abs(llama_cpp_logits(path, ids) - expected).max())


def logits_with_kv(variant: str, key: str, value, folder) -> float:
    """max |Δ| against transformers of llama.cpp's own converter's F32 file of a fixture with one scalar KV set to
    value: how much the fixture's logits depend on that key (the other tests prove the file as written matches)."""
    import gguf

    original = ensure_reference([variant], outtypes=("F32",))[variant, "F32"].path
    changed = shutil.copy(original, Path(folder) / f"{variant}-{key}.gguf")
    reader = gguf.GGUFReader(changed, "r+")
    field = reader.fields[key]
    if field.parts[field.data[0]][0] == value:
        raise ValueError(f"{variant}: {key} is already {value}")
    field.parts[field.data[0]][0] = value
    reader.data.flush()
    del reader
    return max_difference(changed, ensure_models([variant])[variant])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_our_logits_match_transformers(variant, models, tmp_path_factory):
    path, error = our_gguf(variant, "F32", tmp_path_factory.mktemp("ours"))
    assert path is not None, error
    diff = max_difference(path, models[variant])
    assert diff <= tolerance(variant), f"{variant}: max |logit difference| {diff:.2e} against transformers " \
                                       f"(tolerance {tolerance(variant):.0e})"


@pytest.fixture(scope="session")
def reference_f32(request):
    names = [n for n in selected_variants(request.session) if VARIANTS[n].reference]
    return ensure_reference(names, outtypes=("F32",), log=print)


@pytest.mark.reference
@pytest.mark.parametrize("variant", [n for n, v in VARIANTS.items() if v.reference])
def test_reference_converter_logits_match_transformers(variant, models, reference_f32):
    """Calibration: llama.cpp's own converter meets the same tolerances on the same fixtures."""
    path = reference_f32[variant, "F32"].path
    assert path is not None, f"convert_hf_to_gguf.py failed; see {reference_f32[variant, 'F32'].log}"
    diff = max_difference(path, models[variant])
    assert diff <= tolerance(variant), f"{variant}: {diff:.2e}"


# --- broken conversions: the comparison catches them -------------------------------------------------------------
def _f32(t) -> np.ndarray:
    return t.raw.view(np.float32).reshape(t.shape[::-1])


def output_norm_of_one(gguf_file):
    _f32(next(t for t in gguf_file.tensors if t.name == "output_norm.weight"))[:] = 1.0


def qk_in_hugging_face_order(gguf_file):
    """Undoes the rotary row permutation of Q (per query head) and K (per KV head)."""
    arch = gguf_file.kvs["general.architecture"][1]
    heads = {"attn_q": gguf_file.kvs[f"{arch}.attention.head_count"][1],
             "attn_k": gguf_file.kvs[f"{arch}.attention.head_count_kv"][1]}
    for t in gguf_file.tensors:
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        if kind in heads and t.name.endswith(".weight"):
            w = _f32(t)
            n = heads[kind]
            w[:] = w.reshape(n, w.shape[0] // n // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape).copy()


def gemma_norms_without_plus_one(gguf_file):
    for t in gguf_file.tensors:
        if t.name.endswith("norm.weight"):
            _f32(t)[:] -= 1.0


def attention_biases_dropped(gguf_file):
    for t in gguf_file.tensors:
        if t.name.endswith(("attn_q.bias", "attn_k.bias", "attn_v.bias")):
            _f32(t)[:] = 0.0


BROKEN = {"output_norm_of_one": ("llama2", output_norm_of_one),
          "qk_in_hugging_face_order": ("llama2", qk_in_hugging_face_order),
          "gemma_norms_without_plus_one": ("gemma", gemma_norms_without_plus_one),
          "qwen2_attention_biases_dropped": ("qwen2", attention_biases_dropped)}


@pytest.mark.reference
@pytest.mark.parametrize("variant, bug", [(v, bug) for bug, (v, _) in BROKEN.items()])
def test_a_broken_conversion_fails_the_comparison(variant, bug, models, reference_f32, tmp_path):
    """On a copy of the reference converter's F32 GGUF (correct, and independent of our converter's state), each
    bug moves the logits by far more than the tolerance."""
    broken = shutil.copy(reference_f32[variant, "F32"].path, tmp_path / "broken.gguf")
    g = read_gguf(broken, mode="r+")
    BROKEN[bug][1](g)
    g.data.flush()
    del g
    diff = max_difference(broken, models[variant])
    assert diff > 100 * tolerance(variant), f"{bug} moved the logits by only {diff:.2e}"

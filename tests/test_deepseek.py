"""DeepSeek-V3 and V2-Lite beyond the reference and logit comparisons (test_reference.py, test_logits.py: the
"deepseek-v3" and "deepseek-v2-lite" fixtures, identical to llama.cpp's converter at F32, F16, BF16 and Q8_0): what
the family's features do to the logits, so that matching transformers proves each is converted; the layout of the
split kv_b_proj; the multi-token prediction layer left out; the configs that are refused. The DeepSeek-V3 fixture goes
through the workflow to Q4_K_M in test_moe.py; its FP8 release (float8 weights with block scales) is in
test_fp8.py."""
from __future__ import annotations

import json
import struct

import gguf
import numpy as np
import pytest

import conftest

from hf2gguf.architectures import architecture_for
from hf2gguf.errors import ConversionError
from hf2gguf.source import ModelFolder

VARIANT = "deepseek-v3"


def fixture():
    from reference import ensure_models

    return ensure_models([VARIANT])[VARIANT]


def linked_copy(dest):
    """The fixture's folder with its weights linked, so that a test can change config.json."""
    return conftest.linked_copy(fixture(), dest)


def edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


# --- the fixture exercises each feature -------------------------------------------------------------------------------
@pytest.mark.fidelity
@pytest.mark.slow
def test_the_expert_bias_correction_moves_the_fixtures_logits():
    """With e_score_correction_bias zeroed, transformers' own logits move far beyond the tolerance: llama.cpp
    matching them (test_logits.py) means exp_probs_b is written and used for the expert choice."""
    import torch
    import transformers
    from test_logits import SILU_TOLERANCE

    folder = fixture()
    recorded = np.load(folder / "reference_logits.npz")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    biases = [b for name, b in model.named_buffers() if name.endswith("e_score_correction_bias")]
    assert len(biases) == 2 and all(b.abs().max() > 0.1 for b in biases)  # both MoE layers, visibly set
    with torch.no_grad():
        for b in biases:
            b.zero_()
        logits = model(torch.tensor([recorded["input_ids"].tolist()])).logits[0].numpy()
    assert np.abs(logits - recorded["logits"]).max() > 100 * SILU_TOLERANCE


def logits_with_kv(variant: str, key: str, value, folder) -> float:
    """test_logits.logits_with_kv, with the value patched in place of the old one's bytes: gguf.GGUFReader needs
    about 10 s to parse the vocabulary and merges of a file, llama.cpp 2 s to run it."""
    from reference import ensure_models, ensure_reference
    from test_logits import max_difference

    data = bytearray(ensure_reference([variant], outtypes=("F32",))[variant, "F32"].path.read_bytes())
    name = key.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)  # the value's type, then the value
    (kind,) = struct.unpack_from("<I", data, at)
    fmt = {gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?"}[kind]
    if struct.unpack_from(fmt, data, at + 4)[0] == value:
        raise ValueError(f"{key} is already {value}")
    struct.pack_into(fmt, data, at + 4, value)
    changed = folder / f"{variant}-{key}.gguf"
    changed.write_bytes(data)
    return max_difference(changed, ensure_models([variant])[variant])


# each routing / attention KV at a value that turns its feature off in llama.cpp (the group limit: 3 of the 4 groups
# kept instead of 2, as llama.cpp refuses to load a model that keeps every group); V2-Lite's softmax as sigmoid
NEUTRAL = [(VARIANT, "deepseek2.expert_gating_func", int(gguf.ExpertGatingFuncType.SOFTMAX)),
           (VARIANT, "deepseek2.expert_weights_scale", 1.0), (VARIANT, "deepseek2.expert_weights_norm", False),
           (VARIANT, "deepseek2.expert_group_used_count", 3),
           (VARIANT, "deepseek2.rope.scaling.yarn_log_multiplier", 0.0),
           ("deepseek-v2-lite", "deepseek2.expert_gating_func", int(gguf.ExpertGatingFuncType.SIGMOID)),
           ("deepseek-v2-lite", "deepseek2.rope.scaling.yarn_log_multiplier", 0.0)]


@pytest.mark.fidelity
@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("variant, key, value", NEUTRAL)
def test_each_routing_and_yarn_key_moves_the_logits(variant, key, value, tmp_path):
    """On a copy of llama.cpp's own converter's F32 file (which matches transformers), sigmoid scoring, the
    routed scaling factor, top-k normalisation, the group limit and YaRN's mscale_all_dim each changed move the
    logits far beyond the tolerance: the fixture depends on every one of them."""
    from test_logits import SILU_TOLERANCE

    diff = logits_with_kv(variant, key, value, tmp_path)
    assert diff > 100 * SILU_TOLERANCE, f"{variant}: {key} at {value} moved the logits by only {diff:.2e}"


# --- layout ---------------------------------------------------------------------------------------------------------
def test_kv_b_proj_splits_into_transposed_keys_and_values_per_head(tmp_path):
    """attn_k_b is each head's first qk_nope_head_dim rows of kv_b_proj, transposed; attn_v_b its next
    v_head_dim rows; no attn_kv_b. Checked on our F32 file against numpy's slicing of the checkpoint's array."""
    from reference import read_gguf

    from hf2gguf.convert import convert

    folder = fixture()
    config = json.loads((folder / "config.json").read_text())
    heads, nope, v, rank = (config[k] for k in ("num_attention_heads", "qk_nope_head_dim", "v_head_dim",
                                                "kv_lora_rank"))
    model = ModelFolder(folder)
    bits = model.read("model.layers.1.self_attn.kv_b_proj.weight").astype(np.uint32) << 16
    kv_b = bits.view(np.float32).reshape(heads, nope + v, rank)
    model.close()
    out = convert(folder, tmp_path / "f32.gguf", "F32", log=lambda _: None)
    tensors = {t.name: t for t in read_gguf(out).tensors}
    assert "blk.1.attn_kv_b.weight" not in tensors

    def values(name):
        t = tensors[name]
        return t.values().reshape(t.shape[::-1])

    np.testing.assert_array_equal(values("blk.1.attn_k_b.weight"), kv_b[:, :nope].transpose(0, 2, 1))
    np.testing.assert_array_equal(values("blk.1.attn_v_b.weight"), kv_b[:, nope:])


def test_the_multi_token_prediction_layer_and_dense_first_layer():
    """The release's layer model.layers.<num_hidden_layers>.* is in the fixture and not in the GGUF; the first
    layer has a dense FFN, the others experts, shared experts and the expert bias."""
    folder = fixture()
    config = json.loads((folder / "config.json").read_text())
    n = config["num_hidden_layers"]
    model = ModelFolder(folder)
    assert f"model.layers.{n}.eh_proj.weight" in model.tensors
    names = {p.name for p in architecture_for(model).plan()}
    assert not any(name.startswith(f"blk.{n}.") for name in names)
    assert "blk.0.ffn_gate.weight" in names and "blk.0.ffn_gate_exps.weight" not in names
    for b in range(1, n):
        assert {f"blk.{b}.ffn_gate_exps.weight", f"blk.{b}.ffn_up_shexp.weight", f"blk.{b}.exp_probs_b.bias",
                f"blk.{b}.ffn_gate_inp.weight"} <= names


# --- refused configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    (dict(moe_layer_freq=2), r"moe_layer_freq 2: llama.cpp's deepseek2 has experts in every layer"),
    (dict(scoring_func="tanh"), r"scoring_func 'tanh' is none of sigmoid, softmax"),
    (dict(num_experts_per_tok=17), r"num_experts_per_tok 17 is more than the 16 experts"),
    # llama.cpp aborts on loading these (transformers runs them)
    (dict(topk_group=4), r"n_group 4 and topk_group 4 with 16 experts: llama.cpp refuses to load"),
    (dict(n_group=3), r"n_group 3 and topk_group 2 with 16 experts: llama.cpp refuses to load"),
    # llama.cpp reads a plain q_proj only from models of 26 or 27 layers
    (dict(q_lora_rank=None), r"q_lora_rank None with 3 layers: llama.cpp reads a plain q_proj"),
])
def test_configs_llama_cpp_would_run_differently_are_refused(changes, message, tmp_path):
    folder = linked_copy(tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(ConversionError, match=r"config.json: " + message):
        architecture_for(ModelFolder(folder))


def test_a_kv_lora_rank_that_does_not_match_kv_b_proj_is_refused(tmp_path):
    folder = linked_copy(tmp_path / "m")
    edit_config(folder, v_head_dim=16)
    with pytest.raises(ConversionError, match=r"kv_b_proj.weight' has shape \[256, 64\], but config.json implies "
                                              r"\[192, 64\]"):
        architecture_for(ModelFolder(folder)).plan()

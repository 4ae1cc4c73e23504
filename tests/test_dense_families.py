"""SmolLM3, OLMo 2, Granite and GLM-4 beyond the reference and logit comparisons (test_reference.py, test_logits.py:
the "smollm3", "olmo2", "olmo2-v5", "granite" and "glm4" fixtures): what each family's own feature does to the
logits, the configs and tokenizers that are refused, and the workflow, where an OLMo 2 and a Granite release
quantize to Q4_K_M and validate."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from conftest import edit_json, linked_copy, write_safetensors

from hf2gguf.architectures import architecture_for
from hf2gguf.errors import ConversionError
from hf2gguf.source import ModelFolder






# --- SmolLM3: no RoPE in every 4th layer --------------------------------------------------------------------------
def test_smollm3_refuses_a_no_rope_pattern_llama_cpp_would_not_follow(tmp_path):
    from reference import ensure_models

    folder = linked_copy(ensure_models(["smollm3"])["smollm3"], tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["no_rope_layers"] == [1, 1, 1, 0]
    architecture_for(ModelFolder(folder))  # the release's pattern: accepted
    edit_json(folder / "config.json", lambda c: c.update(no_rope_layers=[1, 1, 0, 1]))
    with pytest.raises(ConversionError, match=r"no_rope_layers \[1, 1, 0, 1\] is not llama.cpp's fixed pattern "
                                              r"\[1, 1, 1, 0\]"):
        architecture_for(ModelFolder(folder))


@pytest.mark.fidelity
@pytest.mark.slow
def test_the_smollm3_fixtures_no_rope_layer_moves_its_logits():
    """The fixture exercises the feature: with RoPE in every layer, transformers' own logits move far beyond the
    tolerance, so llama.cpp matching them (test_logits.py) means it leaves RoPE out of the 4th layer."""
    import torch
    import transformers
    from reference import ensure_models
    from test_logits import SILU_TOLERANCE

    folder = ensure_models(["smollm3"])["smollm3"]
    recorded = np.load(folder / "reference_logits.npz")
    config = transformers.AutoConfig.from_pretrained(folder)
    config.no_rope_layers = [1] * config.num_hidden_layers
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([recorded["input_ids"].tolist()])).logits[0].numpy()
    assert np.abs(logits - recorded["logits"]).max() > 100 * SILU_TOLERANCE


# --- OLMo 2: Q/K norms over the whole projection --------------------------------------------------------------------
def olmo2_folder(folder, q_norm_rows):
    e, ff, heads = 32, 64, 4
    t = {"model.embed_tokens.weight": (100, e), "model.norm.weight": (e,), "lm_head.weight": (100, e)}
    for i in range(2):
        p = f"model.layers.{i}."
        t |= {p + n: (e,) for n in ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")}
        t |= {p + f"self_attn.{n}_proj.weight": (e, e) for n in "qkvo"}
        t |= {p + "self_attn.q_norm.weight": (q_norm_rows,), p + "self_attn.k_norm.weight": (e,),
              p + "mlp.gate_proj.weight": (ff, e), p + "mlp.up_proj.weight": (ff, e),
              p + "mlp.down_proj.weight": (e, ff)}
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {k: np.ones(s, np.float32) for k, s in t.items()})
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Olmo2ForCausalLM"], "hidden_size": e, "intermediate_size": ff, "num_attention_heads": heads,
        "num_key_value_heads": heads, "num_hidden_layers": 2, "vocab_size": 100, "rms_norm_eps": 1e-6}))
    return folder


def test_olmo2_q_and_k_norms_cover_the_whole_projection(tmp_path):
    plans = {p.name: p for p in architecture_for(ModelFolder(olmo2_folder(tmp_path / "ok", 32))).plan()}
    assert plans["blk.1.attn_q_norm.weight"].shape == (32,) and plans["blk.1.post_ffw_norm.weight"].shape == (32,)
    assert "blk.0.attn_norm.weight" not in plans and "blk.0.ffn_norm.weight" not in plans
    with pytest.raises(ConversionError, match=r"q_norm.weight has shape \[8\], but config.json implies \[32\]"):
        architecture_for(ModelFolder(olmo2_folder(tmp_path / "per-head", 8))).plan()  # Qwen3's per-head norm


# --- Granite: four multipliers, read by llama.cpp from KVs ----------------------------------------------------------
# each KV at the value llama.cpp uses without it (attention: 1/sqrt(head_dim), head_dim 16)
NEUTRAL = {"granite.embedding_scale": 1.0, "granite.residual_scale": 1.0, "granite.attention.scale": 0.25,
           "granite.logit_scale": 1.0}


@pytest.mark.fidelity
@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("key", NEUTRAL)
def test_each_granite_multiplier_moves_the_logits(key, tmp_path):
    """On a copy of llama.cpp's own converter's F32 file (which matches transformers, test_logits.py), one
    multiplier set to llama.cpp's neutral value moves the logits far beyond the tolerance: the logit comparison
    proves that each is written, under the key llama.cpp reads."""
    from test_logits import SILU_TOLERANCE, logits_with_kv

    diff = logits_with_kv("granite", key, NEUTRAL[key], tmp_path)
    assert diff > 100 * SILU_TOLERANCE, f"{key} at {NEUTRAL[key]} moved the logits by only {diff:.2e}"


def test_granite_writes_the_multipliers_that_are_set_and_ignores_head_dim(tmp_path):
    from reference import ensure_models

    folder = linked_copy(ensure_models(["granite"])["granite"], tmp_path / "m")
    edit_json(folder / "config.json", lambda c: c.update(residual_multiplier=0, head_dim=16))
    arch = architecture_for(ModelFolder(folder))
    w = gguf.GGUFWriter(tmp_path / "kv.gguf", arch.arch_name)
    arch.set_kv(w)
    kv = {k: v.value for k, v in w.kv_data[0].items()}
    assert kv["granite.embedding_scale"] == 12.0 and kv["granite.logit_scale"] == 8.0
    assert kv["granite.attention.scale"] == 0.0625 and "granite.residual_scale" not in kv  # 0: not written
    assert "granite.attention.key_length" not in kv and kv["granite.rope.dimension_count"] == 16


# --- GLM-4: partial RoPE, special tokens from the added vocabulary ----------------------------------------------------
def test_glm4_rotates_half_of_each_head_and_needs_its_user_token(tmp_path):
    from reference import ensure_models

    folder = linked_copy(ensure_models(["glm4"])["glm4"], tmp_path / "m")
    arch = architecture_for(ModelFolder(folder))
    assert arch.rope_dims == 8  # head_dim 16, partial_rotary_factor 0.5
    vocab = arch.vocab(151680)
    assert vocab.tokens[vocab.special_ids["eot"]] == "<|user|>"
    assert vocab.tokens[vocab.special_ids["unk"]] == vocab.tokens[vocab.special_ids["eos"]] == "<|endoftext|>"
    edit_json(folder / "tokenizer.json",
              lambda t: t.update(added_tokens=[a for a in t["added_tokens"] if a["content"] != "<|user|>"]))
    with pytest.raises(ConversionError, match=r"tokenizer.json: .*has no added token <\|user\|>, which GLM-4 uses as "
                                              "its eot token"):
        architecture_for(ModelFolder(folder)).vocab(151680)


# --- the workflow ---------------------------------------------------------------------------------------------------
MODELS = {"olmo2": "olmo2", "granite": "granite"}  # fixture -> general.architecture


@pytest.mark.workflow
@pytest.mark.slow
def test_dense_checkpoints_quantize_to_q4_k_m_and_validate(workflow):
    """An OLMo-2-shaped and a Granite-shaped release through the workflow: converted once by our converter,
    quantized by llama-quantize, loaded and measured by llama.cpp."""
    from conftest import build_fixtures

    build_fixtures(workflow, MODELS)
    for name, arch in MODELS.items():
        path = workflow / f"outputs/GPU_LLM_LLAMA/{name}-Q4_K_M.gguf"
        reader = gguf.GGUFReader(path)
        assert reader.fields["general.architecture"].contents() == arch
        assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
        r = json.loads(path.with_suffix(".json").read_text())
        assert r["loaded"] is True and r["file_bytes"] == path.stat().st_size and r["converter"] == "hf2gguf", r
        assert set(r["tensors_by_type"]) - {"F32"}, r["tensors_by_type"]  # 64-wide rows fall back from Q4_K
        assert 0 <= r["kl_divergence"] < 0.5 and r["top1_agreement"] > 0.5, r

"""Gemma 3 beyond the reference and logit comparisons (test_reference.py, test_logits.py: the "gemma3" and
"gemma3-mm" fixtures): the layouts other than the release's, and the workflow. Through the workflow, the tiny
fixtures shaped like gemma-3-1b-it (Gemma3ForCausalLM) and gemma-3-4b-it (Gemma3ForConditionalGeneration, with a
vision tower) become Q4_K_M GGUFs that llama.cpp loads and validates."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from conftest import write_safetensors

from hf2gguf.architectures import architecture_for
from hf2gguf.errors import ConversionError
from hf2gguf.source import ModelFolder


class KV:
    """Records what an architecture writes: add_rope_freq_base(1e6) -> kv["rope_freq_base"] == 1e6."""

    def __init__(self):
        self.kv = {}

    def __getattr__(self, name):
        return lambda value: self.kv.__setitem__(name.removeprefix("add_"), value)


def gemma3_4b_folder(folder, prefixes=("language_model.model.", "vision_tower.vision_model.", ""), **text):
    """gemma-3-4b-it's layout with 2 small layers: sparse text_config, the language model beside a vision tower."""
    lm, vision, projector = prefixes
    e, f, q, kv = 32, 64, 8 * 256, 4 * 256  # the heads are text_config's defaults: 8 of 256, 4 for K and V
    t = {lm + "embed_tokens.weight": (100, e), lm + "norm.weight": (e,), vision + "post_layernorm.weight": (16,),
         projector + "multi_modal_projector.mm_input_projection_weight": (16, e)}
    for i in range(2):
        p = f"{lm}layers.{i}."
        t |= {p + n: (e,) for n in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                    "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight")}
        t |= {p + "self_attn.q_proj.weight": (q, e), p + "self_attn.k_proj.weight": (kv, e),
              p + "self_attn.v_proj.weight": (kv, e), p + "self_attn.o_proj.weight": (e, q),
              p + "self_attn.q_norm.weight": (256,), p + "self_attn.k_norm.weight": (256,),
              p + "mlp.gate_proj.weight": (f, e), p + "mlp.up_proj.weight": (f, e), p + "mlp.down_proj.weight": (e, f)}
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", {k: np.zeros(s, np.float32) for k, s in t.items()})
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {"hidden_size": e, "intermediate_size": f, "num_hidden_layers": 2, "vocab_size": 100,
                              "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024} | text,
              "vision_config": {"hidden_size": 16, "model_type": "siglip_vision_model"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_release_and_transformers_5_layouts_give_the_same_gguf_tensors(tmp_path):
    arch = architecture_for(ModelFolder(gemma3_4b_folder(tmp_path / "release")))
    release = arch.plan()
    assert arch.notes == ["leaving out the vision tower and projector (2 tensors): no mmproj file is written"]
    v5 = gemma3_4b_folder(tmp_path / "v5", ("model.language_model.", "model.vision_tower.vision_model.", "model."))
    plans = architecture_for(ModelFolder(v5)).plan()
    assert [(p.name, p.shape) for p in plans] == [(p.name, p.shape) for p in release] and len(plans) == 2 + 2 * 13


def test_text_config_defaults_and_rope_of_the_4b_release(tmp_path):
    w = KV()
    architecture_for(ModelFolder(gemma3_4b_folder(tmp_path / "m"))).set_kv(w)
    assert w.kv == {
        "block_count": 2, "context_length": 131072, "embedding_length": 32, "feed_forward_length": 64,
        "head_count": 8, "head_count_kv": 4, "rope_scaling_type": gguf.RopeScalingType.LINEAR,
        "rope_scaling_factor": 8.0, "rope_freq_base": 1e6, "rope_freq_base_swa": 1e4, "layer_norm_rms_eps": 1e-6,
        "key_length": 256, "value_length": 256, "sliding_window": 1024}


def test_no_sliding_window_for_pattern_1_and_no_attention_softcapping(tmp_path):
    w = KV()
    architecture_for(ModelFolder(gemma3_4b_folder(tmp_path / "global", sliding_window_pattern=1))).set_kv(w)
    assert "sliding_window" not in w.kv
    with pytest.raises(ConversionError, match="no attention soft-capping"):
        architecture_for(ModelFolder(gemma3_4b_folder(tmp_path / "capped", attn_logit_softcapping=50.0)))


# Gemma 3's metadata as llama.cpp reads it, each changed in a copy of the reference converter's F32 file: the
# fixtures are sensitive to all of it (the sliding window, the local RoPE base, the global layers' rope scaling)
CHANGED_KV = {"no_sliding_window": ("gemma3", "gemma3.attention.sliding_window", 4096),
              "global_rope_base_on_local_layers": ("gemma3", "gemma3.rope.freq_base_swa", 1e6),
              "no_rope_scaling": ("gemma3-mm", "gemma3.rope.scaling.factor", 1.0)}


@pytest.mark.fidelity
@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("change", CHANGED_KV)
def test_each_gemma3_setting_moves_the_logits(change, tmp_path):
    from test_logits import GELU_TOLERANCE, logits_with_kv

    diff = logits_with_kv(*CHANGED_KV[change], tmp_path)
    # measured: 5.2 without the window, 2.3 with the global base on local layers, 0.57 without the scaling (one
    # global layer in six, 24 positions); both converters' files are within 3.4e-3 of transformers
    assert diff > 50 * GELU_TOLERANCE, f"{change} moved the logits by only {diff:.2e}"


MODELS = ("gemma3", "gemma3-mm")


@pytest.mark.workflow
@pytest.mark.slow
def test_both_gemma3_checkpoints_quantize_to_q4_k_m_and_validate(workflow):
    from conftest import build_fixtures

    build_fixtures(workflow, MODELS)
    for name in MODELS:
        gguf_path = workflow / f"outputs/GPU_LLM_LLAMA/{name}-Q4_K_M.gguf"
        reader = gguf.GGUFReader(gguf_path)
        assert reader.fields["general.architecture"].contents() == "gemma3"
        assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
        assert not [t.name for t in reader.tensors if not t.name.startswith(("token_embd.", "output_norm.", "blk."))]
        r = json.loads(gguf_path.with_suffix(".json").read_text())
        assert r["loaded"] is True and r["file_bytes"] == gguf_path.stat().st_size, r
        assert r["tensors_by_type"].get("Q4_K", 0) > 0, r["tensors_by_type"]
        assert 0 < r["kl_divergence"] < 0.2 and r["top1_agreement"] > 0.3, r  # measured: 0.023-0.025, 0.58-0.62
    logs = {m: (workflow / f"outputs/logs/convert/{m}-BF16.log").read_text() for m in MODELS}
    assert "vision tower" not in logs["gemma3"]
    assert logs["gemma3-mm"].count("leaving out the vision tower and projector (39 tensors)") == 1

"""Llama 4 beyond the reference and logit comparisons (test_reference.py, test_logits.py: the "llama4" Scout-shaped
and "llama4-maverick" fixtures): what the family's features do to the logits, the configs refused because
llama.cpp would run them with other attention than transformers. The Scout-shaped fixture goes through the workflow
to Q4_K_M in test_moe.py."""
from __future__ import annotations

import shutil

import gguf
import numpy as np
import pytest
from conftest import edit_json, linked_copy

from hf2gguf.architectures import architecture_for
from hf2gguf.errors import ConversionError
from hf2gguf.source import ModelFolder






# --- features the fixtures exercise -----------------------------------------------------------------------------
@pytest.mark.fidelity
@pytest.mark.slow
@pytest.mark.parametrize("variant, change", [
    ("llama4", dict(no_rope_layers=[1, 1, 1, 1])),  # RoPE in the 4th layer too
    ("llama4", dict(use_qk_norm=False)),  # Scout without the Q/K L2 norm
    ("llama4-maverick", dict(use_qk_norm=True)),  # Maverick with it
    ("llama4", dict(num_experts_per_tok=2)),  # top-2 routing instead of top-1
])
def test_each_llama4_feature_moves_the_fixtures_logits(variant, change):
    """With one feature changed, transformers' own logits move far beyond the tolerance: llama.cpp matching the
    recorded ones (test_logits.py) means it leaves RoPE out of every 4th layer, L2-normalises Q and K exactly
    when the fixture does, and routes each token to one expert."""
    import torch
    import transformers
    from reference import ensure_models
    from test_logits import SILU_TOLERANCE

    folder = ensure_models([variant])[variant]
    recorded = np.load(folder / "reference_logits.npz")
    config = transformers.AutoConfig.from_pretrained(folder)
    config = getattr(config, "text_config", config)  # Maverick's: Llama4ForConditionalGeneration's
    for key, value in change.items():
        setattr(config, key, value)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([recorded["input_ids"].tolist()])).logits[0].numpy()
    assert np.abs(logits - recorded["logits"]).max() > 100 * SILU_TOLERANCE


@pytest.mark.fidelity
@pytest.mark.reference
@pytest.mark.slow
def test_gate_and_up_swapped_move_the_logits(tmp_path):
    """The logit comparison catches a fused gate_up_proj split the wrong way round: llama.cpp's own F32 file of
    the Scout-shaped fixture with each layer's ffn_gate_exps and ffn_up_exps exchanged."""
    from reference import ensure_models, ensure_reference, read_gguf
    from test_logits import SILU_TOLERANCE, max_difference

    original = ensure_reference(["llama4"], outtypes=("F32",))["llama4", "F32"].path
    changed = shutil.copy(original, tmp_path / "swapped.gguf")
    f = read_gguf(changed, "r+")
    by_name = {t.name: t for t in f.tensors}
    for bid in range(4):
        gate, up = by_name[f"blk.{bid}.ffn_gate_exps.weight"].raw, by_name[f"blk.{bid}.ffn_up_exps.weight"].raw
        g = np.array(gate)
        gate[:] = up
        up[:] = g
    f.data.flush()
    del f
    diff = max_difference(changed, ensure_models(["llama4"])["llama4"])
    assert diff > 100 * SILU_TOLERANCE, f"gate and up swapped moved the logits by only {diff:.2e}"


# --- configs llama.cpp would run otherwise --------------------------------------------------------------------------
# a change of the Scout-shaped fixture's config.json -> the error it gets
REFUSED = {
    "no-rope-pattern": (dict(no_rope_layers=[1, 1, 0, 1]),
                        r"no_rope_layers \[1, 1, 0, 1\] is not llama.cpp's fixed pattern \[1, 1, 1, 0\]"),
    "no-rope-interval": (dict(no_rope_layers=None, no_rope_layer_interval=2),
                         r"no_rope_layer_interval 2 \(no_rope_layers \[1, 0, 1, 0\]\) is not llama.cpp's fixed "
                         r"pattern \[1, 1, 1, 0\]"),
    "two-layers": (dict(num_hidden_layers=2, no_rope_layers=[1, 0], moe_layers=[0, 1]),
                   r"2 layers: llama.cpp leaves RoPE out of every 4th layer and needs at least 4"),
    "qk-norm": (dict(use_qk_norm=False), r"use_qk_norm is False, but llama.cpp uses the Q/K norm exactly when there "
                                         r"are not 128 experts \(16 here\)"),
    "floor-scale": (dict(floor_scale=4096), r"floor_scale is 4096, but llama.cpp fixes it to 8192"),
    "attn-scale": (dict(attn_scale=0.2), r"attn_scale is 0.2, but llama.cpp fixes it to 0.1"),
    "chunk-size": (dict(attention_chunk_size=4096), r"attention_chunk_size is 4096, but llama.cpp fixes it to 8192"),
    "no-temperature-tuning": (dict(attn_temperature_tuning=False), r"attn_temperature_tuning is off"),
    "moe-layers": (dict(moe_layers=[1, 3]),
                   r"moe_layers \[1, 3\] is not \[0, 1, 2, 3\], every interleave_moe_layer_step \(1\) layers"),
}


@pytest.mark.parametrize("change, message", list(REFUSED.values()), ids=list(REFUSED))
def test_llama4_refuses_attention_llama_cpp_would_not_run(tmp_path, change, message):
    from reference import ensure_models

    folder = linked_copy(ensure_models(["llama4"])["llama4"], tmp_path / "m")
    architecture_for(ModelFolder(folder))  # the release's config: accepted
    edit_json(folder / "config.json", lambda c: c.update(change))
    with pytest.raises(ConversionError, match=message):
        architecture_for(ModelFolder(folder))


def test_llama4_writes_the_moe_interleave_and_both_ffn_lengths(tmp_path):
    from reference import ensure_models

    arch = architecture_for(ModelFolder(ensure_models(["llama4-maverick"])["llama4-maverick"]))
    w = gguf.GGUFWriter(tmp_path / "kv.gguf", arch.arch_name)
    arch.set_kv(w)
    kv = {k: v.value for k, v in w.kv_data[0].items()}
    assert kv["llama4.interleave_moe_layer_step"] == 2 and kv["llama4.expert_count"] == 128
    assert kv["llama4.feed_forward_length"] == 128 and kv["llama4.expert_feed_forward_length"] == 32
    assert "llama4.attention.sliding_window" not in kv  # chunked attention: llama.cpp's fixed 8192
    plans = {p.name: p.shape for p in arch.plan()}
    assert plans["blk.0.ffn_gate.weight"] == (128, 64) and "blk.0.ffn_gate_exps.weight" not in plans
    assert plans["blk.1.ffn_gate_exps.weight"] == (128, 32, 64) and plans["blk.1.ffn_down_exps.weight"] == (128, 64, 32)
    assert plans["blk.1.ffn_gate_shexp.weight"] == (32, 64) and "blk.0.ffn_gate_shexp.weight" not in plans


def test_llama4_leaves_the_vision_model_of_a_conditional_generation_checkpoint_out():
    """Maverick as released (the "llama4-maverick" fixture, identical to the reference in test_reference.py): the
    language model's tensors under language_model.*, its settings in text_config; the vision model and projector
    are left out, and the conversion says so."""
    from reference import ensure_models

    model = ModelFolder(ensure_models(["llama4-maverick"])["llama4-maverick"])
    arch = architecture_for(model)
    plans = arch.plan()
    vision = [n for n in model.tensors if n.startswith(("vision_model.", "multi_modal_projector."))]
    assert len(vision) > 20 and not {p.source for p in plans} & set(vision)
    assert arch.notes == [f"leaving out the vision model and projector ({len(vision)} tensors): no mmproj file is "
                          "written"]
    # rope_freqs, token_embd, output_norm, output; 13 tensors in each MoE layer (1 and 3), 9 in each dense one
    assert arch.n_expert == 128 and len(plans) == 1 + 3 + 2 * 13 + 2 * 9

"""The LayerNorm decoders (StableLM, Starcoder2, Phi-2, GPT-NeoX, Cohere): the numeric work of each against an
independent formulation, the configurations refused, the settings whose loss the logit comparison catches, and the
workflow end to end. Equality with llama.cpp's converter and transformers' logits on release-shaped fixtures
(tests/generators/models.py) is in test_reference.py and test_logits.py."""
from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
from conftest import TINY, write_safetensors

from hf2gguf.architectures import architecture_for
from hf2gguf.architectures.gptneox import by_projection
from hf2gguf.convert import convert
from hf2gguf.errors import ConversionError
from hf2gguf.source import ModelFolder


def test_fused_qkv_is_reordered_from_per_head_to_per_projection():
    n_head, d, e = 3, 4, 5
    w = np.arange(n_head * 3 * d * e).reshape(n_head * 3 * d, e)
    expected = np.concatenate([w[(h * 3 + j) * d:(h * 3 + j + 1) * d] for j in range(3) for h in range(n_head)])
    np.testing.assert_array_equal(by_projection(n_head)(w), expected)
    bias = np.arange(n_head * 3 * d)
    np.testing.assert_array_equal(by_projection(n_head)(bias), expected[:, 0] // e)


@pytest.mark.parametrize("arch, v4, dims", [
    ("GPTNeoXForCausalLM", {"rotary_pct": 0.25, "rotary_emb_base": 10000}, 4),  # Pythia's config.json
    ("StableLmForCausalLM", {"partial_rotary_factor": 0.25, "rope_theta": 10000.0}, 4),
    ("PhiForCausalLM", {"partial_rotary_factor": 0.4, "rope_theta": 10000.0}, 6)])  # int(0.4 * 64) // 4
def test_partial_rotary_from_v4_and_v5_configs(tmp_path, arch, v4, dims):
    """transformers 5 writes the rotary fraction into rope_parameters; the dimension count is the same."""
    fraction = v4.get("rotary_pct", v4.get("partial_rotary_factor"))
    v5 = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": fraction}}
    for name, style in (("v4", v4), ("v5", v5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({
            "architectures": [arch], "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 4, "num_hidden_layers": 2, "layer_norm_eps": 1e-5, "max_position_embeddings": 64,
            "vocab_size": 64} | style))
        write_safetensors(tmp_path / name / "model.safetensors", {"x": np.zeros(1, np.float32)})
        assert architecture_for(ModelFolder(tmp_path / name)).rope_dims == dims, name


def stablelm_folder(folder, n_head=12, drop=None, **config):
    """A small StableLM 2 12B-shaped folder: per-head Q/K norms (12 heads: "10" sorts before "2" as a string)."""
    rng = np.random.default_rng(0)
    e, hd, ff, vocab = n_head * 4, 4, 64, 1024
    t = {"model.embed_tokens.weight": (vocab, e), "model.norm.weight": (e,), "model.norm.bias": (e,),
         "lm_head.weight": (vocab, e)}
    for i in range(2):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": (e,), p + "input_layernorm.bias": (e,),
              p + "self_attn.q_proj.weight": (e, e), p + "self_attn.k_proj.weight": (e, e),
              p + "self_attn.v_proj.weight": (e, e), p + "self_attn.o_proj.weight": (e, e),
              p + "mlp.gate_proj.weight": (ff, e), p + "mlp.up_proj.weight": (ff, e),
              p + "mlp.down_proj.weight": (e, ff)}
        t |= {f"{p}self_attn.{w}_layernorm.norms.{h}.weight": (hd,) for w in "qk" for h in range(n_head)}
    t.pop(drop, None)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in sorted(t.items())}
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", arrays)
    cfg = {"architectures": ["StableLmForCausalLM"], "model_type": "stablelm", "hidden_size": e,
           "intermediate_size": ff, "num_attention_heads": n_head, "num_key_value_heads": n_head,
           "num_hidden_layers": 2, "vocab_size": vocab, "layer_norm_eps": 1e-5, "max_position_embeddings": 128,
           "rope_theta": 10000.0, "partial_rotary_factor": 0.25, "qk_layernorm": True, "use_qkv_bias": False,
           "use_parallel_residual": True}
    (folder / "config.json").write_text(json.dumps(cfg | config))
    return folder, arrays


def test_per_head_norms_are_stacked_in_numeric_head_order(tmp_path):
    folder, arrays = stablelm_folder(tmp_path / "m")
    plans = {p.name: p for p in architecture_for(ModelFolder(folder)).plan()}
    q = plans["blk.1.attn_q_norm.weight"]
    assert q.shape == (12, 4) and [p.tensor for p in q.parts] == \
        [f"model.layers.1.self_attn.q_layernorm.norms.{h}.weight" for h in range(12)]
    assert "blk.0.ffn_norm.weight" not in plans  # parallel residual: one norm per layer


def test_stacked_per_head_norms_hold_each_heads_weights(tmp_path):
    folder, arrays = stablelm_folder(tmp_path / "m")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(TINY / f, folder / f)
    reader = gguf.GGUFReader(convert(folder, tmp_path / "o.gguf", "F32", log=lambda m: None, threads=2))
    k = next(t for t in reader.tensors if t.name == "blk.0.attn_k_norm.weight")
    expected = np.stack([arrays[f"model.layers.0.self_attn.k_layernorm.norms.{h}.weight"] for h in range(12)])
    np.testing.assert_array_equal(np.asarray(k.data).reshape(expected.shape), expected)


def test_a_missing_head_norm_is_named(tmp_path):
    folder, _ = stablelm_folder(tmp_path / "m", drop="model.layers.1.self_attn.q_layernorm.norms.7.weight")
    with pytest.raises(ConversionError, match="has 11 of the per-head q_layernorm weights of model.layers.1.self_attn"):
        architecture_for(ModelFolder(folder)).plan()


def test_phi2_with_an_ffn_other_than_4_x_hidden_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["PhiForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_hidden_layers": 2, "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.4, "vocab_size": 64}))
    write_safetensors(tmp_path / "model.safetensors", {"model.embed_tokens.weight": np.zeros((64, 64), np.float32)})
    with pytest.raises(ConversionError, match="intermediate_size 128 is not 4 x hidden_size 64"):
        architecture_for(ModelFolder(tmp_path))


# --- the comparison with transformers catches the loss of each family's own settings -----------------------------
CHANGED_KV = {  # variant, key, a wrong value
    "stablelm_full_rotary": ("stablelm2", "stablelm.rope.dimension_count", 16),
    "phi2_full_rotary": ("phi2", "phi2.rope.dimension_count", 16),
    "gptneox_sequential_residual": ("pythia", "gptneox.use_parallel_residual", False),
    "cohere_logit_scale_of_one": ("cohere", "command-r.logit_scale", 1.0),
}


@pytest.mark.fidelity
@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("change", CHANGED_KV)
def test_each_setting_moves_the_logits(change, tmp_path):
    from test_logits import logits_with_kv, tolerance

    variant = CHANGED_KV[change][0]
    diff = logits_with_kv(*CHANGED_KV[change], tmp_path)
    assert diff > 50 * tolerance(variant), f"{change} moved the logits by only {diff:.2e}"


@pytest.mark.fidelity
@pytest.mark.reference
@pytest.mark.slow
def test_fused_qkv_left_per_head_moves_the_logits(tmp_path):
    """llama.cpp's own F32 Pythia file with each layer's Q/K/V rows put back in Hugging Face's per-head order."""
    from reference import ensure_models, ensure_reference, read_gguf
    from test_logits import max_difference, tolerance

    changed = shutil.copy(ensure_reference(["pythia"], outtypes=("F32",))["pythia", "F32"].path, tmp_path / "x.gguf")
    g = read_gguf(changed, mode="r+")
    n_head = g.kvs["gptneox.attention.head_count"][1]
    for t in g.tensors:
        if ".attn_qkv." in t.name:
            a = t.raw.view(np.float32).reshape(t.shape[::-1])
            a[:] = a.reshape(3, n_head, -1, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape).copy()
    g.data.flush()
    del g
    diff = max_difference(changed, ensure_models(["pythia"])["pythia"])
    assert diff > 50 * tolerance("pythia"), f"per-head Q/K/V moved the logits by only {diff:.2e}"


@pytest.mark.fidelity
@pytest.mark.slow
@pytest.mark.parametrize("change", ["norms_of_one", "heads_reversed"])
def test_stablelm2_12b_per_head_norms_move_the_logits(change, tmp_path):
    """llama.cpp's converter fails on StableLM 2 12B checkpoints, so ours is proved against transformers alone:
    llama.cpp uses the stacked Q/K norms (of one, the logits move), each head's own (heads swapped, they move)."""
    from reference import ensure_models, our_gguf, read_gguf
    from test_logits import max_difference, tolerance

    path, error = our_gguf("stablelm2-12b", "F32", tmp_path)
    assert path is not None, error
    changed = shutil.copy(path, tmp_path / "x.gguf")
    g = read_gguf(changed, mode="r+")
    for t in g.tensors:
        if t.name.endswith(("attn_q_norm.weight", "attn_k_norm.weight")):
            a = t.raw.view(np.float32).reshape(t.shape[::-1])
            a[:] = 1.0 if change == "norms_of_one" else a[::-1].copy()
    g.data.flush()
    del g
    models = ensure_models(["stablelm2-12b"])
    assert max_difference(path, models["stablelm2-12b"]) <= tolerance("stablelm2-12b")
    diff = max_difference(changed, models["stablelm2-12b"])
    assert diff > 50 * tolerance("stablelm2-12b"), f"{change} moved the logits by only {diff:.2e}"


MODELS = {"starcoder2": "starcoder2", "phi2": "phi2", "pythia": "gptneox", "cohere": "command-r"}


@pytest.mark.workflow
@pytest.mark.slow
def test_layernorm_checkpoints_quantize_to_q4_k_m_and_validate(workflow):
    """A Starcoder2, a Phi-2, a Pythia and an Aya 23-shaped release through the workflow: converted by our
    converter, quantized by llama-quantize, loaded and measured by llama.cpp."""
    from conftest import build_fixtures

    build_fixtures(workflow, MODELS)
    for name, arch in MODELS.items():
        intermediate = "BF16" if name == "starcoder2" else "F16"  # auto: the checkpoint's own type
        log = (workflow / f"outputs/logs/convert/{name}-{intermediate}.log").read_text()
        assert f"({arch}, " in log, log[-2000:]  # our converter's first line names the architecture
        path = workflow / f"outputs/GPU_LLM_LLAMA/{name}-Q4_K_M.gguf"
        reader = gguf.GGUFReader(path)
        assert reader.fields["general.architecture"].contents() == arch
        assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
        r = json.loads(path.with_suffix(".json").read_text())
        assert r["loaded"] is True and r["file_bytes"] == path.stat().st_size, r
        # k-quants need rows of 256: only Phi-2's and Pythia's FFN (256 wide) has them; the rest fall back to
        # llama-quantize's legacy types
        quantized = {t for t, n in r["tensors_by_type"].items() if n and t not in ("F32", "F16", "BF16")}
        assert quantized >= ({"Q4_K"} if name in ("phi2", "pythia") else {"Q5_0"}), r["tensors_by_type"]
        assert 0 < r["kl_divergence"] < 0.5 and r["top1_agreement"] > 0.5, r

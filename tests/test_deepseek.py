"""DeepSeek-V3 and V2-Lite beyond the reference and logit comparisons (test_reference.py, test_logits.py: the
"deepseek-v3" and "deepseek-v2-lite" fixtures, identical to llama.cpp's converter at F32, F16, BF16 and Q8_0): what
the family's features do to the logits, so that matching transformers proves each is converted; the layout of the
split kv_b_proj; the multi-token prediction layer left out; the configs that are refused (the FP8 release among
them). The DeepSeek-V3 fixture goes through the workflow to Q4_K_M in test_moe.py."""
from __future__ import annotations

import json
import shutil
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
def test_the_fp8_release_is_refused_with_the_fix(tmp_path):
    """DeepSeek's own release stores FP8 (e4m3) weights with weight_scale_inv block scales. Our converter does not
    dequantize them: one error, naming config.json and the converter that does."""
    folder = linked_copy(tmp_path / "m")
    edit_config(folder, quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                             "weight_block_size": [128, 128]})
    with pytest.raises(ConversionError, match=r"config.json: declares fp8 weights .*\n  fix: set CONVERTER: llama.cpp"):
        architecture_for(ModelFolder(folder))


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


# --- the FP8 release, through llama.cpp's converter -------------------------------------------------------------------
FP8_LINEAR = ("_proj.weight", "_proj_with_mqa.weight")  # what DeepSeek quantizes: every projection, not the router,
# the embedding, the output or the norms
FP8_BLOCK = 32  # the release's weight_block_size is [128, 128]; 32 gives these 64-wide tensors several blocks


def fp8_release_and_its_bf16_twin(dest):
    """The fixture as DeepSeek releases V3 (each projection in float8_e4m3fn with a float32 scale per block,
    weight_scale_inv, and quantization_config fp8) and a bf16 twin holding the values those stand for. The scales
    are powers of two, so e4m3 code times scale is exact in bf16: the twin is what dequantizing gives."""
    import torch
    from safetensors.torch import load_file, save_file

    release, twin = dest / "fp8", dest / "twin"
    for folder in (release, twin):
        shutil.copytree(fixture(), folder, ignore=shutil.ignore_patterns("*.npz", "*.safetensors"))
    index = json.loads((fixture() / "model.safetensors.index.json").read_text())
    for shard in sorted(fixture().glob("*.safetensors")):
        fp8, bf16 = {}, {}
        for name, w in load_file(shard).items():
            if not name.endswith(FP8_LINEAR) or w.ndim != 2:
                fp8[name] = bf16[name] = w
                continue
            (rows, cols), b = w.shape, FP8_BLOCK
            padded = torch.zeros(-(-rows // b) * b, -(-cols // b) * b)  # the last blocks may be partial
            padded[:rows, :cols] = w.float()
            peak = padded.reshape(padded.shape[0] // b, b, padded.shape[1] // b, b).abs().amax(dim=(1, 3))
            scale = torch.exp2(torch.ceil(torch.log2(peak.clamp(min=1e-12) / 448.0)))  # e4m3's largest value: 448
            full = scale.repeat_interleave(b, 0).repeat_interleave(b, 1)[:rows, :cols]
            codes = (w.float() / full).to(torch.float8_e4m3fn)
            fp8[name], fp8[name + "_scale_inv"] = codes, scale.float()
            bf16[name] = (codes.float() * full).to(torch.bfloat16)
            index["weight_map"][name + "_scale_inv"] = shard.name
        save_file(fp8, release / shard.name, metadata={"format": "pt"})
        save_file(bf16, twin / shard.name, metadata={"format": "pt"})
    (release / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    edit_config(release, quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                              "weight_block_size": [FP8_BLOCK, FP8_BLOCK]})
    return release, twin


@pytest.mark.workflow
@pytest.mark.reference
@pytest.mark.slow
def test_the_fp8_release_converts_through_llama_cpps_converter_as_its_dequantized_twin(tmp_path):
    """CONVERTER auto sends the FP8 release to llama.cpp's converter, which dequantizes it (our converter reads float
    weights only). Its F32 intermediate holds exactly the tensors our converter writes for the bf16 twin, and it
    quantizes to Q4_K_M and validates."""
    from reference import compare
    from test_fallback import NAME, kv, one_pair_workflow, targets

    from conftest import snakemake
    from hf2gguf.convert import convert

    release, twin = fp8_release_and_its_bf16_twin(tmp_path)
    wf = one_pair_workflow(tmp_path / "wf", {"ds-fp8": release})
    run = snakemake(wf, *targets("ds-fp8"))
    assert run.jobs()["convert"] == 1, run.output
    intermediate = wf / "outputs/intermediate/ds-fp8-F32.gguf"
    assert kv(intermediate, "hf2gguf.converter") == NAME
    ours = convert(twin, tmp_path / "twin.gguf", "F32", log=lambda m: None)
    c = compare(ours, intermediate)
    assert not c.tensors, c.report()
    report = json.loads((wf / "outputs/GPU_LLM_LLAMA/ds-fp8-Q4_K_M.json").read_text())
    assert report["converter"] == NAME and report["loaded"] is True and 0 <= report["kl_divergence"] < 0.5, report

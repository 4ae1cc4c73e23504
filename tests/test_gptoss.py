"""gpt-oss beyond the reference and logit comparisons (test_reference.py, test_logits.py: the "gptoss" fixture, as
OpenAI released it with MXFP4 experts, and "gptoss-bf16", transformers' own layout as the dequantized copies store
it): the MXFP4 experts' bytes against an independent decode of the release's blocks and scales, the streaming of
those bytes, what the sinks and the sliding window do to the logits, and the inputs that are refused. The release goes
through the workflow to Q4_K_M, its MXFP4 experts kept, in test_moe.py."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from conftest import linked_copy

from hf2gguf import convert as convert_module
from hf2gguf.architectures import architecture_for
from hf2gguf.convert import convert
from hf2gguf.errors import ConversionError
from hf2gguf.source import ModelFolder

Q = gguf.GGMLQuantizationType
# E2M1, the 4-bit float of the OCP Microscaling spec: code bit 3 is the sign, bits 2-1 the exponent, bit 0 the mantissa
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)


def decode_release(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The release's MXFP4 ([..., rows, n / 32, 16] codes, two a byte, the even element in the low nibble;
    [..., rows, n / 32] exponents biased by 127) as float64 [..., rows, n]."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = np.where(codes & 8, -1.0, 1.0) * E2M1[codes & 7]
    values = values * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return values.reshape(*scales.shape[:-1], -1)


def release_tensors(folder):
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out |= {k: v.numpy() for k, v in load_file(shard).items() if k.endswith(("_blocks", "_scales"))}
    return out


@pytest.fixture(scope="module")
def release():
    from reference import ensure_models

    return ensure_models(["gptoss"])["gptoss"]


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    """Our GGUF of the release at an output type (shared with test_reference.py and test_logits.py in one run)."""
    from reference import our_gguf, read_gguf

    def get(outtype):
        path, error = our_gguf("gptoss", outtype, tmp_path_factory.mktemp("ours"))
        assert path is not None, error
        return read_gguf(path)
    return get


@pytest.mark.parametrize("outtype, file_type", [("F16", gguf.LlamaFileType.MOSTLY_MXFP4_MOE),
                                                ("Q8_0", gguf.LlamaFileType.MOSTLY_Q8_0)])
def test_mxfp4_experts_hold_the_releases_values_whatever_the_output_type(release, converted, outtype, file_type):
    """gguf's MXFP4 decode of our ffn_{gate,up,down}_exps equals a decode of the release's blocks and scales
    written here from the spec: gate the even rows of gate_up_proj, up the odd ones."""
    g = converted(outtype)
    assert g.kvs["general.file_type"][1] == file_type
    tensors = {t.name: t for t in g.tensors}
    source = release_tensors(release)
    for bid in range(2):
        prefix = f"model.layers.{bid}.mlp.experts"
        gate_up = decode_release(source[f"{prefix}.gate_up_proj_blocks"], source[f"{prefix}.gate_up_proj_scales"])
        down = decode_release(source[f"{prefix}.down_proj_blocks"], source[f"{prefix}.down_proj_scales"])
        assert np.abs(gate_up).max() > 0.1
        for name, expected in (("gate", gate_up[:, 0::2]), ("up", gate_up[:, 1::2]), ("down", down)):
            t = tensors[f"blk.{bid}.ffn_{name}_exps.weight"]
            assert t.type == Q.MXFP4 and t.shape == expected.shape[::-1]
            np.testing.assert_array_equal(t.values(), expected.reshape(-1))
    # the other weights follow the output type; the experts' biases stay F32, as every tensor not named .weight
    assert tensors["blk.0.attn_q.weight"].type == Q[outtype]
    assert tensors["blk.0.ffn_gate_exps.bias"].type == Q.F32 and tensors["blk.0.ffn_gate_exps.bias"].shape == (64, 16)


def test_mxfp4_bytes_are_streamed_in_chunks_of_rows(release, converted, tmp_path, monkeypatch):
    """Chunks of a few rows, which start inside an expert and, for gate and up, read every other checkpoint row,
    give the bytes that whole tensors give."""
    whole = converted("F16")
    monkeypatch.setattr(convert_module, "CHUNK_BYTES", 3 * 34)  # 3 rows of 64 values (2 blocks of 17 bytes)
    model = ModelFolder(release)
    plans = {p.name: p for p in architecture_for(model).plan()}
    for t in whole.tensors:
        if t.type != Q.MXFP4:
            continue
        work = list(convert_module.pieces(model, [plans[t.name]], [Q.MXFP4], 0))
        assert len(work) == -(-16 * 64 // 3) and all(w.stop - w.start <= 3 for w in work)
        out = tmp_path / t.name
        with open(out, "wb") as f:
            f.truncate(t.raw.nbytes)
            for w in work:
                convert_module.process(model, w, f.fileno())
        assert out.read_bytes() == t.raw.tobytes()


def test_a_raw_tensor_keeps_its_type_and_is_read_in_row_chunks(monkeypatch):
    """convert.py's path for bytes already in a block type, on its own: the type whatever the output type, and
    pieces that cover the rows once, in order, at their byte offsets."""
    from hf2gguf.architectures import Raw, TensorPlan

    plan = TensorPlan("blk.0.ffn_down_exps.weight", (3, 10, 64),
                      raw=Raw(Q.MXFP4, ("x_blocks", "x_scales"), lambda start, stop: None))
    assert {convert_module.tensor_type(plan, t) for t in convert_module.OUTTYPES.values()} == {Q.MXFP4}
    monkeypatch.setattr(convert_module, "CHUNK_BYTES", 4 * 34)
    work = list(convert_module.pieces(None, [plan], [Q.MXFP4], 1000))
    assert [(w.start, w.stop, w.offset) for w in work] == [(r, min(r + 4, 30), 1000 + 34 * r) for r in range(0, 30, 4)]


def test_mxfp4_plans_come_first(release):
    """llama.cpp's converter writes the MXFP4 experts before every other tensor, layer by layer: down, gate, up."""
    names = [p.name for p in architecture_for(ModelFolder(release)).plan()]
    assert names[:6] == [f"blk.{b}.ffn_{k}_exps.weight" for b in (0, 1) for k in ("down", "gate", "up")]


@pytest.mark.fidelity
@pytest.mark.slow
@pytest.mark.parametrize("change", ["no sinks", "no sliding window"])
def test_the_fixtures_sinks_and_sliding_window_move_its_logits(change):
    """The fixture exercises both features: without them, transformers' own logits move far beyond the SiLU
    tolerance that gptoss-bf16 meets (test_logits.py), so llama.cpp matching them means it applies both."""
    import torch
    import transformers
    from reference import ensure_models
    from test_logits import SILU_TOLERANCE

    folder = ensure_models(["gptoss-bf16"])["gptoss-bf16"]
    recorded = np.load(folder / "reference_logits.npz")
    config = transformers.AutoConfig.from_pretrained(folder)
    if change == "no sliding window":
        config.sliding_window = 10_000
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
    with torch.no_grad():
        if change == "no sinks":  # a sink logit of -inf takes no share of the attention
            for layer in model.model.layers:
                layer.self_attn.sinks.fill_(-1e9)
        logits = model(torch.tensor([recorded["input_ids"].tolist()])).logits[0].numpy()
    assert np.abs(logits - recorded["logits"]).max() > 100 * SILU_TOLERANCE


# --- refused inputs -------------------------------------------------------------------------------------------------


def test_blocks_without_scales_are_one_error_naming_both(release, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = linked_copy(release, tmp_path / "m")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = "model.layers.1.mlp.experts.down_proj_scales"
    shard = folder / index["weight_map"].pop(name)
    tensors = load_file(shard.resolve())
    del tensors[name]
    shard.unlink()
    save_file(tensors, shard, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"has 'model.layers.1.mlp.experts.down_proj_blocks' but no "
                                              r"model.layers.1.mlp.experts.down_proj_scales: an MXFP4 weight needs "
                                              r"both") as e:
        convert(folder, tmp_path / "o.gguf", "F16", log=lambda m: None)
    assert e.value.fix and not (tmp_path / "o.gguf").exists()


def test_mxfp4_blocks_that_disagree_with_config_json_are_refused(release, tmp_path):
    folder = linked_copy(release, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    with pytest.raises(ConversionError, match=r"down_proj_blocks' is U8 \[16, 64, 2, 16\]; config.json implies "
                                              r"MXFP4 uint8 \[16, 64, 3, 16\]"):
        architecture_for(ModelFolder(folder)).plan()


@pytest.mark.parametrize("change, message", [
    ({"layer_types": ["full_attention", "sliding_attention"]}, "is not llama.cpp's fixed gpt-oss pattern"),
    ({"swiglu_limit": 10.0}, "swiglu_limit is 10.0, but llama.cpp fixes gpt-oss's to 7.0")])
def test_settings_llama_cpp_would_not_follow_are_refused(release, tmp_path, change, message):
    """llama.cpp's gpt-oss has no keys for the layer pattern and the SwiGLU: it would ignore other values."""
    folder = linked_copy(release, tmp_path / "m")
    architecture_for(ModelFolder(folder))  # the release's: accepted
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(ConversionError, match=message):
        architecture_for(ModelFolder(folder))

"""Mixture-of-Experts: a GGUF tensor made from many checkpoint tensors, and one checkpoint tensor feeding several.

Each layer's experts become one stacked tensor per projection, in numeric expert order, checked here against
numpy's own stack of the checkpoint's arrays (read back with gguf.GGUFReader); the fused layout that
transformers 5 saves gives the same file as the per-expert layout of the released checkpoints; a missing or an
extra expert is one error that names the tensor; and the writer never holds a stacked tensor whole (each unit
of work is a chunk of one expert). Equality with llama.cpp's converter and transformers' logits on real-shaped
fixtures is in test_reference.py and test_logits.py. Five MoE families (Mixtral, Qwen3-MoE, DeepSeek-V3, gpt-oss's
MXFP4 release, Llama 4) go through the workflow to Q4_K_M in one run."""
from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
from conftest import TINY, write_safetensors

from hf2gguf.architectures import architecture_for
from hf2gguf.convert import CHUNK_BYTES, OUTTYPES, convert, pieces, tensor_type
from hf2gguf.errors import ConversionError
from hf2gguf.source import ModelFolder

Q = gguf.GGMLQuantizationType
N_EXPERT, N_EMBD, N_FF, N_VOCAB = 12, 64, 32, 1024  # 12 experts: "10" sorts before "2" as a string


def mixtral_arrays(rng, n_layer=2, n_expert=N_EXPERT) -> dict[str, np.ndarray]:
    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    arrays = {"model.embed_tokens.weight": w(N_VOCAB, N_EMBD), "model.norm.weight": w(N_EMBD),
              "lm_head.weight": w(N_VOCAB, N_EMBD)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        arrays |= {p + "input_layernorm.weight": w(N_EMBD), p + "post_attention_layernorm.weight": w(N_EMBD),
                   p + "self_attn.q_proj.weight": w(N_EMBD, N_EMBD), p + "self_attn.k_proj.weight": w(32, N_EMBD),
                   p + "self_attn.v_proj.weight": w(32, N_EMBD), p + "self_attn.o_proj.weight": w(N_EMBD, N_EMBD),
                   p + "block_sparse_moe.gate.weight": w(n_expert, N_EMBD)}
        for e in range(n_expert):
            q = f"{p}block_sparse_moe.experts.{e}."
            arrays |= {q + "w1.weight": w(N_FF, N_EMBD), q + "w2.weight": w(N_EMBD, N_FF),
                       q + "w3.weight": w(N_FF, N_EMBD)}
    return arrays


def make_mixtral(folder, arrays, n_expert=N_EXPERT, n_layer=2):
    folder.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(TINY / f, folder / f)
    names = sorted(arrays)  # header order, as safetensors writes it: experts 10 and 11 come before 2
    write_safetensors(folder / "model.safetensors", {n: arrays[n] for n in names})
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": N_EMBD,
              "intermediate_size": N_FF, "num_hidden_layers": n_layer, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_local_experts": n_expert, "num_experts_per_tok": 2,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 1e6, "vocab_size": N_VOCAB,
              "tie_word_embeddings": False, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def read(path):
    r = gguf.GGUFReader(path)
    return {t.name: t for t in r.tensors}, [t.name for t in r.tensors]


@pytest.fixture(scope="module")
def arrays():
    return mixtral_arrays(np.random.default_rng(0))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, arrays):
    folder = make_mixtral(tmp_path_factory.mktemp("m") / "mixtral", arrays)
    return convert(folder, folder.parent / "f32.gguf", "F32", log=lambda m: None)


def test_experts_are_stacked_in_numeric_order(converted, arrays):
    tensors, _ = read(converted)
    for layer in range(2):
        for proj, name in (("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")):
            expected = np.stack([arrays[f"model.layers.{layer}.block_sparse_moe.experts.{e}.{proj}.weight"]
                                 for e in range(N_EXPERT)])
            t = tensors[f"blk.{layer}.{name}.weight"]
            assert tuple(int(n) for n in reversed(t.shape)) == expected.shape
            np.testing.assert_array_equal(np.asarray(t.data).reshape(expected.shape), expected)
        router = tensors[f"blk.{layer}.ffn_gate_inp.weight"]
        np.testing.assert_array_equal(np.asarray(router.data), arrays[f"model.layers.{layer}.block_sparse_moe.gate.weight"])


def test_expert_metadata_and_types(converted, tmp_path, arrays):
    r = gguf.GGUFReader(converted)
    assert r.fields["llama.expert_count"].contents() == N_EXPERT
    assert r.fields["llama.expert_used_count"].contents() == 2
    q8 = convert(converted.parent / "mixtral", tmp_path / "q8.gguf", "Q8_0", log=lambda m: None)
    tensors, _ = read(q8)
    assert tensors["blk.0.ffn_gate_exps.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # routers stay F32


def test_a_layers_stacked_tensors_come_where_its_last_expert_is(converted):
    _, order = read(converted)
    # llama.cpp's converter writes a layer's three stacked tensors together, w1, w2, w3, when the layer's last
    # expert tensor arrives: in header (name) order that is experts.9.w3, before the router ("gate")
    block0 = [n for n in order if n.startswith("blk.0.")]
    i = block0.index("blk.0.ffn_gate_exps.weight")
    assert block0[i:i + 4] == ["blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight",
                               "blk.0.ffn_up_exps.weight", "blk.0.ffn_gate_inp.weight"]


def test_fused_experts_give_the_same_file(tmp_path, arrays, converted):
    """transformers 5 saves a layer's experts as gate_up_proj [n, 2 * n_ff, n_embd] and down_proj [n, n_embd,
    n_ff]: one checkpoint tensor feeds both ffn_gate_exps and ffn_up_exps."""
    fused = {k: v for k, v in arrays.items() if ".experts." not in k}
    for layer in range(2):
        p = f"model.layers.{layer}.block_sparse_moe.experts."
        gate_up = [np.concatenate([arrays[f"{p}{e}.w1.weight"], arrays[f"{p}{e}.w3.weight"]]) for e in range(N_EXPERT)]
        fused[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = np.stack(gate_up)
        fused[f"model.layers.{layer}.mlp.experts.down_proj"] = np.stack(
            [arrays[f"{p}{e}.w2.weight"] for e in range(N_EXPERT)])
    folder = make_mixtral(tmp_path / "fused", fused)
    ours, ref = read(convert(folder, tmp_path / "fused.gguf", "F32", log=lambda m: None))[0], read(converted)[0]
    for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        a, b = ours[f"blk.1.{name}.weight"], ref[f"blk.1.{name}.weight"]
        assert list(a.shape) == list(b.shape)
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))


@pytest.mark.parametrize("change, named", [
    ("drop", "model.layers.1.block_sparse_moe.experts.5.w3.weight"),
    ("extra", "model.layers.0.block_sparse_moe.experts.12.w1.weight"),
])
def test_a_missing_or_extra_expert_is_one_error_naming_it(tmp_path, arrays, change, named):
    changed = dict(arrays)
    if change == "drop":
        del changed[named]
    else:
        changed[named] = changed["model.layers.0.block_sparse_moe.experts.0.w1.weight"]
    folder = make_mixtral(tmp_path / "m", changed)
    with pytest.raises(ConversionError, match=named.replace(".", r"\.")) as e:
        convert(folder, tmp_path / "o.gguf", "F16", log=lambda m: None)
    assert "12 experts" in str(e.value)
    assert not (tmp_path / "o.gguf").exists()


def test_a_stacked_tensor_is_never_held_whole(tmp_path):
    """Each unit of work reads rows of one expert, at most CHUNK_BYTES of them, however large the stack."""
    rng = np.random.default_rng(1)
    arrays = mixtral_arrays(rng, n_layer=1, n_expert=4)
    big = (CHUNK_BYTES // (4 * N_EMBD)) * 3 // 2  # one expert's w1 is 1.5 chunks
    for e in range(4):
        arrays[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"] = rng.standard_normal((big, N_EMBD)).astype(np.float32)
        arrays[f"model.layers.0.block_sparse_moe.experts.{e}.w3.weight"] = rng.standard_normal((big, N_EMBD)).astype(np.float32)
        arrays[f"model.layers.0.block_sparse_moe.experts.{e}.w2.weight"] = rng.standard_normal((N_EMBD, big)).astype(np.float32)
    folder = make_mixtral(tmp_path / "m", arrays, n_expert=4, n_layer=1)
    json_config = json.loads((folder / "config.json").read_text()) | {"intermediate_size": big}
    (folder / "config.json").write_text(json.dumps(json_config))
    model = ModelFolder(folder)
    plans = architecture_for(model).plan()
    types = [tensor_type(p, OUTTYPES["F16"]) for p in plans]
    work = [w for w in pieces(model, plans, types, 0) if w.plan.name == "blk.0.ffn_gate_exps.weight"]
    assert len(work) == 8  # 4 experts x 2 chunks
    for w in work:
        assert (w.stop - w.start) * model.row_bytes(w.part.tensor) <= CHUNK_BYTES
    expected = np.stack([arrays[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"] for e in range(4)])
    tensors, _ = read(convert(folder, tmp_path / "o.gguf", "F16", log=lambda m: None, threads=2))
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.ffn_gate_exps.weight"].data).reshape(expected.shape),
                                  expected.astype(np.float16))


# fixture: (general.architecture, experts, least top-1 agreement of its Q4_K_M). A random model's next-token
# distribution is nearly flat, and more so over a large vocabulary, so 4-bit noise flips its argmax often: Llama 4's
# (Llama 3's 128k tokens) measured 0.42 at a KL divergence of 0.09; DeepSeek-V3's, whose close sigmoid router scores
# also flip expert choices, 0.24 at 0.15 (chance: 1 in 50257)
MODELS = {"mixtral": ("llama", 8, 0.5), "qwen3moe": ("qwen3moe", 16, 0.5), "deepseek-v3": ("deepseek2", 16, 0.1),
          "gptoss": ("gpt-oss", 16, 0.5), "llama4": ("llama4", 16, 0.25)}


@pytest.mark.workflow
@pytest.mark.slow
def test_moe_checkpoints_quantize_to_q4_k_m_and_validate(workflow):
    """Mixtral-, Qwen3-MoE-, DeepSeek-V3-, gpt-oss- and Llama-4-shaped releases through the workflow, in one run:
    converted once by our converter, quantized by llama-quantize, loaded and measured by llama.cpp. gpt-oss's
    release keeps its MXFP4 experts (llama-quantize is told to keep them: it refuses to requantize them, and
    llama.cpp's own gpt-oss files keep them too); everything else is quantized."""
    from conftest import build_fixtures
    from reference import read_gguf  # gguf.GGUFReader takes about 30 s on a 128k-token vocabulary

    run = build_fixtures(workflow, MODELS)
    assert "keeping the release's MXFP4 tensors as they are (6, e.g. blk.0.ffn_" in run.output
    for name, (arch, n_expert, top1) in MODELS.items():
        path = workflow / f"outputs/GPU_LLM_LLAMA/{name}-Q4_K_M.gguf"
        g = read_gguf(path)
        assert g.kvs["general.architecture"][1] == arch and g.kvs[f"{arch}.expert_count"][1] == n_expert
        assert g.kvs["general.file_type"][1] == gguf.LlamaFileType.MOSTLY_Q4_K_M
        exps = [t for t in g.tensors if t.name.endswith("_exps.weight")]
        assert exps and all(t.shape[-1] == n_expert for t in exps), name
        expert_types = {t.type for t in exps}
        assert expert_types == {Q.MXFP4} if name == "gptoss" else Q.MXFP4 not in expert_types, (name, expert_types)
        r = json.loads(path.with_suffix(".json").read_text())
        assert r["loaded"] is True and r["file_bytes"] == path.stat().st_size and r["converter"] == "hf2gguf", r
        # rows of 64 or 32 values do not fit K-quant blocks of 256: llama-quantize falls back to Q5_0/Q5_1/Q8_0
        assert r["tensors_by_type"].get("Q5_0", 0) > 0 and not {"F16", "BF16"} & set(r["tensors_by_type"]), r
        assert 0 < r["kl_divergence"] < 0.5 and r["top1_agreement"] > top1, r


@pytest.mark.fidelity
@pytest.mark.reference
@pytest.mark.slow
def test_experts_in_string_order_move_the_logits(tmp_path):
    """The logit comparison catches the bug that numeric order prevents: llama.cpp's own F32 file of the
    16-expert fixture, with each layer's experts stacked as "0, 1, 10, 11, ..., 2, ..." (the router unchanged)."""
    from reference import ensure_models, ensure_reference
    from test_logits import SILU_TOLERANCE, max_difference

    original = ensure_reference(["qwen3moe"], outtypes=("F32",))["qwen3moe", "F32"].path
    changed = shutil.copy(original, tmp_path / "string-order.gguf")
    order = sorted(range(16), key=str)
    reader = gguf.GGUFReader(changed, "r+")
    stacks = [t for t in reader.tensors if "_exps." in t.name]
    assert len(stacks) == 6
    for t in stacks:
        t.data[:] = np.array(t.data)[order]
    reader.data.flush()
    del reader
    diff = max_difference(changed, ensure_models(["qwen3moe"])["qwen3moe"])
    assert diff > 100 * SILU_TOLERANCE, f"experts in string order moved the logits by only {diff:.2e}"

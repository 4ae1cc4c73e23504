"""The converter alone: read each output back with gguf.GGUFReader and compare it with the source tensors."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from conftest import TINY, make_gpt2

from hf2gguf.cli import main as cli_main
from hf2gguf.convert import convert
from hf2gguf.errors import ConversionError
from safetensors import safe_open

Q = gguf.GGMLQuantizationType
T = gguf.TokenType


def read(path):
    r = gguf.GGUFReader(path)
    kv = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
    tensors = {t.name: t for t in r.tensors}
    return kv, tensors


def source(name, folder=TINY):
    with safe_open(folder / "model.safetensors", "numpy") as f:
        return f.get_tensor(name)


def data(t):
    """A tensor's values as float32, in numpy (row-major) shape."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {t: convert(TINY, d / f"tiny-{t}.gguf", t, log=lambda m: None) for t in ("F32", "F16", "BF16", "Q8_0")}


def test_tensor_names_shapes_and_types(tiny):
    kv, tensors = read(tiny["F16"])
    expected = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    for i in range(2):
        expected |= {f"blk.{i}.{n}.{s}" for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up",
                                                  "ffn_down") for s in ("weight", "bias")}
    assert set(tensors) == expected  # no attn.bias mask buffers, no output (tied)
    shape = lambda n: [int(x) for x in reversed(tensors[n].shape)]  # noqa: E731
    assert shape("token_embd.weight") == [1024, 256]
    assert shape("blk.0.attn_qkv.weight") == [768, 256]  # Conv1D [in, out] transposed to [out, in]
    assert shape("blk.1.ffn_up.weight") == [1024, 256]
    assert shape("blk.1.ffn_down.weight") == [256, 1024]
    for name, t in tensors.items():
        if name.endswith(("_norm.weight", ".bias")) or name == "position_embd.weight":
            assert t.tensor_type == Q.F32, name
        else:
            assert t.tensor_type == Q.F16, name


@pytest.mark.parametrize("outtype,qtype,file_type", [("F32", Q.F32, 0), ("F16", Q.F16, 1), ("BF16", Q.BF16, 32),
                                                     ("Q8_0", Q.Q8_0, 7)])
def test_weights_have_the_requested_type(tiny, outtype, qtype, file_type):
    kv, tensors = read(tiny[outtype])
    assert kv["general.file_type"] == file_type
    assert tensors["blk.0.ffn_up.weight"].tensor_type == qtype
    assert tensors["blk.0.ffn_up.bias"].tensor_type == Q.F32


def test_values_match_the_source(tiny):
    _, f32 = read(tiny["F32"])
    wte = source("wte.weight").astype(np.float32)
    np.testing.assert_array_equal(data(f32["token_embd.weight"]), wte)
    np.testing.assert_array_equal(data(f32["blk.0.attn_qkv.weight"]), source("h.0.attn.c_attn.weight").T)
    np.testing.assert_array_equal(data(f32["blk.1.ffn_down.weight"]), source("h.1.mlp.c_proj.weight").T)
    np.testing.assert_array_equal(data(f32["output_norm.weight"]), source("ln_f.weight"))
    np.testing.assert_array_equal(data(f32["blk.0.attn_qkv.bias"]), source("h.0.attn.c_attn.bias"))
    _, f16 = read(tiny["F16"])
    np.testing.assert_array_equal(data(f16["blk.0.ffn_up.weight"]), source("h.0.mlp.c_fc.weight").T)
    _, q8 = read(tiny["Q8_0"])
    err = np.abs(data(q8["token_embd.weight"]) - wte).max()
    assert 0 < err <= np.abs(wte).max() / 127 * 0.51 + 1e-6  # Q8_0: half a step of each block's scale at most


def test_gpt2_metadata(tiny):
    kv, _ = read(tiny["F16"])
    assert kv["general.architecture"] == "gpt2"
    assert kv["general.name"] == "tiny-gpt2"
    assert kv["general.quantization_version"] == 2
    assert kv["gpt2.context_length"] == 256
    assert kv["gpt2.embedding_length"] == 256
    assert kv["gpt2.block_count"] == 2
    assert kv["gpt2.attention.head_count"] == 4
    assert kv["gpt2.feed_forward_length"] == 1024
    assert kv["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)


def test_tokenizer_arrays(tiny):
    kv, _ = read(tiny["F16"])
    vocab = json.loads((TINY / "vocab.json").read_text(encoding="utf-8"))
    merges = [l for l in (TINY / "merges.txt").read_text(encoding="utf-8").splitlines() if not l.startswith("#")]
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert kv["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 1024  # one per embedding row
    assert all(tokens[i] == s for s, i in vocab.items() if i < 999)
    assert tokens[999] == "<|endoftext|>" and types[999] == T.CONTROL
    assert tokens[1000] == "[PAD1000]" and types[1000] == T.UNUSED and tokens[1023] == "[PAD1023]"
    assert set(types[:999]) == {T.NORMAL}
    assert kv["tokenizer.ggml.merges"] == merges and merges[0] == "Ġ t"
    assert kv["tokenizer.ggml.bos_token_id"] == kv["tokenizer.ggml.eos_token_id"] == 999


def test_conversion_is_deterministic(tmp_path, tiny):
    again = convert(TINY, tmp_path / "again.gguf", "F16", log=lambda m: None)
    assert again.read_bytes() == tiny["F16"].read_bytes()
    assert str(TINY) not in again.read_bytes().decode("latin-1")  # no absolute paths in the file


def test_bf16_checkpoint_is_copied_bit_exact(tmp_path):
    folder = make_gpt2(tmp_path / "m", dtype="BF16")
    out = convert(folder, tmp_path / "auto.gguf", "auto", log=lambda m: None)
    kv, tensors = read(out)
    assert kv["general.file_type"] == 32  # auto picks BF16 for a bf16 checkpoint
    raw = np.fromfile(folder / "model.safetensors", dtype=np.uint8)
    header_len = int.from_bytes(raw[:8].tobytes(), "little")
    meta = json.loads(raw[8:8 + header_len].tobytes())["wte.weight"]
    start, end = meta["data_offsets"]
    wte_bits = raw[8 + header_len + start:8 + header_len + end].view(np.uint16).reshape(meta["shape"])
    np.testing.assert_array_equal(tensors["token_embd.weight"].data.view(np.uint16).reshape(wte_bits.shape), wte_bits)
    # and bf16 -> F32 is exact: the bits shifted into the high half
    f32 = read(convert(folder, tmp_path / "f32.gguf", "F32", log=lambda m: None))[1]
    np.testing.assert_array_equal(data(f32["token_embd.weight"]).view(np.uint32), wte_bits.astype(np.uint32) << 16)


def test_f16_checkpoint_auto_is_f16(tmp_path):
    out = convert(make_gpt2(tmp_path / "m", dtype="F32"), tmp_path / "o.gguf", "auto", log=lambda m: None)
    assert read(out)[0]["general.file_type"] == 1


def test_sharded_prefixed_untied_v5_config(tmp_path):
    """transformers-v5 style: transformer. prefix, no n_ctx; sharded with an index; untied lm_head."""
    folder = make_gpt2(tmp_path / "m", prefix="transformer.", shards=3, tie=False, drop_config=("n_ctx",),
                       n_inner=128)
    kv, tensors = read(convert(folder, tmp_path / "o.gguf", "F32", log=lambda m: None))
    assert "output.weight" in tensors and "token_embd.weight" in tensors
    assert kv["gpt2.context_length"] == 64  # n_positions
    assert kv["gpt2.feed_forward_length"] == 128  # n_inner


def test_context_length_falls_back_to_wpe_rows(tmp_path):
    folder = make_gpt2(tmp_path / "m", n_positions=48, drop_config=("n_ctx", "n_positions"))
    assert read(convert(folder, tmp_path / "o.gguf", "F16", log=lambda m: None))[0]["gpt2.context_length"] == 48


def test_rows_that_do_not_fit_q8_0_blocks_fall_back_to_f16(tmp_path):
    folder = make_gpt2(tmp_path / "m", n_embd=48, n_head=2)  # 48 is not a multiple of Q8_0's 32
    said = []
    _, tensors = read(convert(folder, tmp_path / "o.gguf", "Q8_0", log=said.append))
    assert tensors["blk.0.attn_qkv.weight"].tensor_type == Q.F16
    assert tensors["blk.0.ffn_down.weight"].tensor_type == Q.Q8_0  # rows of 4*48 = 192 fit
    assert any("blk.0.attn_qkv.weight" in m and "F16" in m for m in said)


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    folder = make_gpt2(tmp_path / "m", config_extra={"architectures": ["MambaForCausalLM"]})
    with pytest.raises(ConversionError, match="(?s)MambaForCausalLM is not supported.*GPT2LMHeadModel"):
        convert(folder, tmp_path / "o.gguf", log=lambda m: None)
    assert not (tmp_path / "o.gguf").exists()


def test_pickle_only_folder_is_refused_without_loading(tmp_path):
    folder = make_gpt2(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    with pytest.raises(ConversionError, match="(?s)pickle.*safetensors"):
        convert(folder, tmp_path / "o.gguf", log=lambda m: None)


def test_failed_conversion_leaves_no_file(tmp_path):
    folder = make_gpt2(tmp_path / "m")
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[: len(raw) // 2])  # truncated mid-tensor
    with pytest.raises(ConversionError, match="model.safetensors"):
        convert(folder, tmp_path / "out" / "o.gguf", log=lambda m: None)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


def test_cli(tmp_path, capsys):
    assert cli_main([str(TINY), "-o", str(tmp_path / "o.gguf"), "--outtype", "Q8_0", "--name", "x"]) == 0
    assert read(tmp_path / "o.gguf")[0]["general.name"] == "x"
    assert cli_main([str(tmp_path / "nope"), "-o", str(tmp_path / "p.gguf")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_error_mid_write_leaves_neither_output_nor_temp(tmp_path, monkeypatch):
    import hf2gguf.convert as conv

    calls = []

    def failing_encode(*args):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return real_encode(*args)

    real_encode = conv.encode
    monkeypatch.setattr(conv, "encode", failing_encode)
    with pytest.raises(OSError, match="disk full"):
        convert(TINY, tmp_path / "o.gguf", "F16", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []

"""hf2gguf/gguf_header.py against gguf.GGUFReader, the gguf package's full reader: the same KVs and tensor infos,
on our converter's output and on llama-quantize's."""
from __future__ import annotations

import subprocess
import sys

import gguf
import pytest
from conftest import ROOT, TINY

from hf2gguf.convert import convert
from hf2gguf.gguf_header import read_header


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, llama_quantize):
    out = tmp_path_factory.mktemp("header")
    files = [convert(TINY, out / f"{t}.gguf", t, log=lambda m: None) for t in ("F32", "F16", "Q8_0")]
    quantized = out / "Q4_K_M.gguf"
    subprocess.run([llama_quantize, "--override-kv", "hf2gguf.precision=str:Q4_K_M", files[1], quantized, "Q4_K_M"],
                   check=True, capture_output=True)
    return files + [quantized]


def test_the_same_as_ggufs_reader(ggufs):
    for path in ggufs:
        kv, tensors = read_header(path)
        reader = gguf.GGUFReader(path)
        scalars = {k: f.contents() for k, f in reader.fields.items()
                   if f.types[0] != gguf.GGUFValueType.ARRAY and not k.startswith("GGUF.")}
        assert kv == scalars, path
        assert "tokenizer.ggml.tokens" not in kv and kv["general.architecture"] == "gpt2"
        assert [(t.name, t.type, t.shape, t.n_elements, t.n_bytes) for t in tensors] == [
            (t.name, t.tensor_type, tuple(int(d) for d in reversed(t.shape)), int(t.n_elements), int(t.n_bytes))
            for t in reader.tensors], path
    assert read_header(ggufs[-1])[0]["hf2gguf.precision"] == "Q4_K_M"  # llama-quantize's override


@pytest.mark.parametrize("damage", ["truncated in the vocabulary", "truncated in the tensor infos", "empty",
                                    "not a gguf"])
def test_a_damaged_file_raises_value_error(ggufs, tmp_path, damage):
    bad = tmp_path / "bad.gguf"
    raw = ggufs[0].read_bytes()
    infos = raw.index(b"token_embd.weight")  # the tensor infos follow the KVs
    bad.write_bytes({"truncated in the vocabulary": raw[:5000], "truncated in the tensor infos": raw[:infos + 5],
                     "empty": b"", "not a gguf": b"GGML" + raw[4:]}[damage])
    with pytest.raises(ValueError, match="bad.gguf: not a readable GGUF header"):
        read_header(bad)


def test_full_precision_ids_are_ggmls():
    from hf2gguf.gguf_header import FULL_PRECISION

    assert {i: gguf.GGMLQuantizationType(i).name for i in FULL_PRECISION} == FULL_PRECISION


def test_a_quantize_job_reads_a_full_precision_header_without_importing_gguf(ggufs):
    """0.13 s per job: the quantize script lists an F16 intermediate's tensor types with the standard library."""
    code = ("import sys; sys.path.insert(0, 'scripts'); import quantize; from pathlib import Path; "
            f"print(sorted(quantize.tensor_types(Path({str(ggufs[1])!r})))); print('gguf' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["['F16', 'F32']", "False"], out


def test_other_types_are_named_by_gguf(ggufs):
    types = {t.type_name for t in read_header(ggufs[-1])[1]}
    assert {"Q4_K", "Q6_K", "F32"} <= types

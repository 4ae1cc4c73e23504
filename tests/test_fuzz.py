"""Fuzzing the converter's input parsing: malformed safetensors headers, index JSON, config.json and tokenizer.json.

Every case, generated from a fixed seed, must end within a time bound either in a valid GGUF or in our own
ConversionError, with nothing left behind: no crash, no hang, no other exception.
"""
from __future__ import annotations

import json
import random
import shutil
import signal

import gguf
import pytest
from conftest import make_gpt2

from hf2gguf.convert import convert
from hf2gguf.errors import ConversionError

CASES = 600
SEED = 20261124
TIME_LIMIT_S = 10

ODD_VALUES = [None, True, False, 0, -1, 1, 2**63, 1.5, float("nan"), "", "x", "F16", [], [1], [[1, 2]], {},
              {"a": 1}, "../evil", "/etc/passwd", "BF16", "I8", 64, 32, 1024]


def odd(rng):
    return rng.choice(ODD_VALUES)


def mutate_json(rng, value, depth=0):
    """Randomly damages a JSON value: replaces, deletes or retypes a member somewhere inside."""
    if isinstance(value, dict) and value and depth < 4:
        key = rng.choice(list(value))
        r = rng.random()
        if r < 0.25:
            del value[key]
        elif r < 0.5:
            value[key] = odd(rng)
        else:
            value[key] = mutate_json(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and depth < 4:
        i = rng.randrange(len(value))
        if rng.random() < 0.5:
            value[i] = odd(rng)
        else:
            value[i] = mutate_json(rng, value[i], depth + 1)
        return value
    return odd(rng)


def damage_safetensors(rng, path):
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    kind = rng.randrange(5)
    if kind == 0:  # truncated anywhere
        raw = raw[: rng.randrange(len(raw))]
    elif kind == 1:  # flipped bytes in the header
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(min(len(raw), 8 + n))] ^= 1 << rng.randrange(8)
    elif kind == 2:  # a lying header length
        raw[:8] = rng.choice([0, 1, n - 1, n + 1, 2**40, 2**63, len(raw)]).to_bytes(8, "little")
    elif kind == 3:  # a damaged but well-formed JSON header
        header = mutate_json(rng, json.loads(raw[8:8 + n]))
        text = json.dumps(header).encode()
        raw = bytearray(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    else:  # offsets shifted: overlaps, gaps, past the end
        header = json.loads(raw[8:8 + n])
        name = rng.choice([k for k in header if k != "__metadata__"])
        start, end = header[name]["data_offsets"]
        delta = rng.choice([-4, -2, 2, 4, 10**9])
        header[name]["data_offsets"] = [start + delta, end + delta] if rng.random() < 0.5 else [start, end + delta]
        text = json.dumps(header).encode()
        raw = bytearray(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    path.write_bytes(bytes(raw))


def damage_json_file(rng, path):
    if rng.random() < 0.15:
        raw = path.read_bytes()
        path.write_bytes(raw[: rng.randrange(max(1, len(raw)))])  # not JSON any more
    else:
        path.write_text(json.dumps(mutate_json(rng, json.loads(path.read_text()))))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    make_gpt2(root / "sharded", n_embd=32, n_layer=1, n_head=2, n_positions=16, shards=2)
    make_gpt2(root / "single", n_embd=32, n_layer=1, n_head=2, n_positions=16, dtype="BF16")
    return root


def timeout(signum, frame):
    raise TimeoutError("the converter hung")


def test_malformed_inputs_end_in_our_error(template, tmp_path):
    rng = random.Random(SEED)
    outcomes = {"converted": 0, "refused": 0}
    signal.signal(signal.SIGALRM, timeout)
    for case in range(CASES):
        folder = tmp_path / f"case{case}"
        shutil.copytree(template / rng.choice(["sharded", "single"]), folder)
        target = rng.choice(["safetensors", "index", "config", "tokenizer"])
        if target == "safetensors":
            damage_safetensors(rng, rng.choice(sorted(folder.glob("*.safetensors"))))
        elif target == "index" and (folder / "model.safetensors.index.json").exists():
            damage_json_file(rng, folder / "model.safetensors.index.json")
        elif target == "tokenizer":
            damage_json_file(rng, folder / "tokenizer.json")
        else:
            damage_json_file(rng, folder / "config.json")
        out = tmp_path / f"out{case}" / "o.gguf"
        signal.alarm(TIME_LIMIT_S)
        try:
            convert(folder, out, rng.choice(["auto", "F16", "Q8_0"]), log=lambda m: None)
            gguf.GGUFReader(out)  # whatever converts must be a readable GGUF
            outcomes["converted"] += 1
        except ConversionError as e:
            assert str(e).strip(), case
            assert not out.parent.exists() or not any(out.parent.iterdir()), f"case {case} left a file"
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"case {case} ({target}) raised {type(e).__name__}: {e}")
        finally:
            signal.alarm(0)
        shutil.rmtree(folder)
    assert outcomes["refused"] > CASES // 2, outcomes  # the generator really produces broken inputs

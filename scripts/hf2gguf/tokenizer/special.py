"""Special tokens: their ids, the add_bos/add_eos/add_sep flags, the chat template and the normalizer flags.

special_vocab() finds them as gguf-py's SpecialVocab does for llama.cpp's convert_hf_to_gguf.py (b11312), from
tokenizer.json (its post-processor and normalizer), tokenizer_config.json (or chat_template.jinja/.json) and
config.json, in that order of precedence; generation_config.json fills ids that no other file gives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..source import read_json
from .files import content, json_if_present, malformed

SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


@dataclass
class Specials:
    """What special_vocab() found; set() keeps the first valid id of each type, as SpecialVocab does."""
    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    chat_template: str | list | None = None
    normalizer: dict[str, bool] = field(default_factory=dict)
    types: tuple[str, ...] = SPECIAL_TYPES
    n_vocab: int | None = None

    def set(self, name: str, id_) -> None:
        if type(id_) is not int or name in self.ids:
            return
        if id_ < 0:
            raise ValueError(f"invalid id {id_} for the {name} token")
        if self.n_vocab is None or id_ < self.n_vocab:
            self.ids[name] = id_


def _parse_normalizer(norm: dict, out: dict) -> None:
    kind = norm.get("type")
    if kind == "Lowercase":
        out["lowercase"] = True
    elif kind == "StripAccents":
        out["strip_accents"] = True
    elif kind == "BertNormalizer":
        for key, name in (("lowercase", "lowercase"), ("strip_accents", "strip_accents")):
            if key in norm:
                out[name] = norm[key]
    elif kind == "Sequence":
        for n in norm.get("normalizers", []):
            _parse_normalizer(n, out)


def _template_flags(proc: dict, tc: dict | None, sp: Specials, found: dict) -> None:
    """TemplateProcessing: a leading special token means add_bos, a trailing one add_eos (or eot/eom)."""
    single, pair = proc.get("single", []), proc.get("pair", [])
    first = last = None
    if len(single) > 1:
        first = single[0].get("SpecialToken", {}).get("id")
        if first:
            if not tc:
                found["bos"] = first
            elif first not in (found["bos"], found["cls"]):
                if not found["bos"]:
                    tc["bos_token"] = found["bos"] = first
                if not found["cls"]:
                    tc["cls_token"] = found["cls"] = first
            sp.add["bos"] = first in (found["bos"], found["cls"])
        last = single[-1].get("SpecialToken", {}).get("id")
        if last:
            if not tc:
                found["eos"] = last
            elif last != found["eos"]:
                for extra in ("eot", "eom"):
                    if extra not in sp.types:
                        sp.types = tuple(sp.types) + (extra,)
                        tc[f"{extra}_token"] = found["eos"]
                        break
                tc["eos_token"] = found["eos"] = last
            sp.add["eos"] = last == found["eos"]
    if not pair:
        return
    start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
    stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
    pair = pair[slice(start, stop)]
    if not pair or pair[0].get("Sequence", {}).get("id") != "A" or pair[-1].get("Sequence", {}).get("id") != "B":
        return
    middle = pair[1:-1]
    if middle:
        add_sep = False
        entry = middle[0].get("SpecialToken", {}).get("id")
        if entry in (found["sep"], found["eos"]) and not last:
            add_sep = True
        if len(middle) == 2 and middle[1].get("SpecialToken", {}).get("id") in (found["sep"], found["eos"]):
            add_sep = True
        sp.add["sep"] = add_sep
        if add_sep and not found["sep"] and tc:
            tc["sep_token"] = found["eos"]


def _special_from_tokenizer_json(tok_json: dict, tc: dict | None, sp: Specials) -> list:
    """Normalizer flags and the post-processor's add_* flags; returns the added tokens."""
    if isinstance(tok_json.get("normalizer"), dict):
        _parse_normalizer(tok_json["normalizer"], sp.normalizer)
    added_tokens = tok_json.get("added_tokens") or []
    if not isinstance(added_tokens, list) or not all(isinstance(t, dict) for t in added_tokens):
        raise ValueError("added_tokens must be a list of objects")
    found = {k: (tc or {}).get(f"{k}_token") for k in ("bos", "cls", "eos", "sep")}
    if not found["bos"] and found["cls"] and tc:
        tc["bos_token"] = found["bos"] = found["cls"]
    if not found["eos"] and found["sep"] and tc:
        tc["eos_token"] = found["eos"] = found["sep"]
    post = tok_json.get("post_processor")
    for proc in (post.get("processors", [post]) if isinstance(post, dict) else []):
        kind = proc.get("type")
        if kind == "ByteLevel":
            sp.add.setdefault("bos", False)
            sp.add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            sp.add.update(bos=True, eos=True, sep=True)
            if not found["cls"] and tc:
                tc["cls_token"] = found["cls"] = proc.get("cls", [found["bos"]])[0]
            if not found["sep"] and tc:
                tc["sep_token"] = found["sep"] = proc.get("sep", [found["eos"]])[0]
        elif kind == "TemplateProcessing":
            _template_flags(proc, tc, sp, found)
    return added_tokens


def special_vocab(folder: Path, config: dict, n_vocab: int | None,
                  types: tuple[str, ...] = SPECIAL_TYPES) -> Specials:
    """Special ids, add flags, chat template and normalizer flags as SpecialVocab finds them; ids from n_vocab
    on are dropped (n_vocab None: none are)."""
    sp = Specials(types=types, n_vocab=n_vocab)
    tok_json_path, tc_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tok_json = json_if_present(tok_json_path)
    tc = json_if_present(tc_path)
    added_tokens = []
    if tok_json is not None:
        with malformed(tok_json_path):
            added_tokens = _special_from_tokenizer_json(tok_json, tc, sp)
    if tc:
        template = tc["chat_template"] if "chat_template" in tc else _chat_template_file(folder)
        with malformed(tc_path):
            if isinstance(template, list) and not all(isinstance(c, dict) for c in template):
                raise ValueError("a list of chat templates must hold {name, template} objects")
            if template is None or isinstance(template, (str, list)):
                sp.chat_template = template
            for name in sp.types:
                flag = tc.get(f"add_{name}_token")
                if isinstance(flag, bool):
                    sp.add.setdefault(name, flag)
                text = content(tc.get(f"{name}_token"))
                if text is not None:
                    sp.set(name, next((t.get("id") for t in added_tokens if t.get("content") == text), None))
    with malformed(folder / "config.json"):
        for name in sp.types:
            id_ = config.get(f"{name}_token_id")
            if id_ is None and isinstance(config.get("text_config"), dict):
                id_ = config["text_config"].get(f"{name}_token_id")
            sp.set(name, id_)
    # Last, for ids no other file gives: generation_config.json, first of a list (llama.cpp's converter does not
    # read it, and would write no such id at all).
    generation = json_if_present(folder / "generation_config.json") or {}
    with malformed(folder / "generation_config.json"):
        for name in sp.types:
            id_ = generation.get(f"{name}_token_id")
            sp.set(name, id_[0] if isinstance(id_, list) and id_ else id_)
    return sp


def _chat_template_file(folder: Path):
    """The chat template of chat_template.jinja (with additional_chat_templates/*.jinja) or chat_template.json."""
    jinja, as_json = folder / "chat_template.jinja", folder / "chat_template.json"
    if jinja.is_file():
        with malformed(jinja):  # not UTF-8 (a UnicodeDecodeError is a ValueError)
            template = jinja.read_text(encoding="utf-8")
        extra = sorted((folder / "additional_chat_templates").glob("*.jinja"))
        if extra:
            template = [{"name": "default", "template": template}] + [
                {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        return template
    if as_json.is_file():
        return read_json(as_json).get("chat_template")
    return None


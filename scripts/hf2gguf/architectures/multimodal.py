"""The language model of a conditional-generation (image and text) checkpoint, as llama.cpp's converter writes its
text GGUF: the settings of `text_config` merged over the top level and over transformers' text defaults (which
the releases' text_config relies on), the tensors under `language_model.`, the vision part left out with a note
(no mmproj file is written). A text-only checkpoint of the family goes through the same code unchanged."""
from __future__ import annotations

from typing import ClassVar


class TextOfMultimodal:
    """Mixed in before the decoder class (Gemma 3, Llama 4)."""

    text_defaults: ClassVar[dict] = {}  # transformers' <Family>TextConfig defaults of the fields used
    vision_prefixes: ClassVar[tuple[str, ...]] = ()  # the tensors left out
    vision_name: ClassVar[str] = ""  # what the note calls them

    def read_config(self, config):
        text = config.get("text_config")
        return config | self.text_defaults | text if isinstance(text, dict) else self.text_defaults | config

    def plan(self):
        vision = [n for n in self.model.tensors if n.startswith(self.vision_prefixes)]
        if vision:
            self.notes.append(f"leaving out the {self.vision_name} ({len(vision)} tensors): no mmproj file is "
                              "written")
        return super().plan()

    def skip(self, hf_name):
        return hf_name.startswith(self.vision_prefixes) or super().skip(hf_name)

    def map_name(self, hf_name):
        # language_model.model.layers.N (the releases) or model.language_model.layers.N (transformers 5 modules)
        return super().map_name(hf_name.replace("language_model.", "", 1))

    def vocab(self, n_vocab):
        from ..tokenizer import load_vocab

        # special ids from config.json as it is (top level first, then text_config), as gguf-py's SpecialVocab
        return load_vocab(self.model.path, n_vocab, self.model.config, **self.vocab_options())

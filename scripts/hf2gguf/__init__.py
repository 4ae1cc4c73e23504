"""hf2gguf: convert a Hugging Face model folder (config.json, *.safetensors, tokenizer files) to GGUF.

Pure Python on numpy, safetensors and gguf: no torch, no transformers, and pickle files are never loaded.
"""

__version__ = "0.1.0"

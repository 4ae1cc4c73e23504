"""One module per architecture. Importing this package registers them all."""
from . import gemma, gemma2, gpt2, llama, mistral, phi3, qwen2, qwen3  # noqa: F401
from .base import REGISTRY, Architecture, TensorPlan, architecture_for  # noqa: F401

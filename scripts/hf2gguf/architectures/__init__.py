"""One module per architecture. Importing this package registers them all."""
from . import gemma, gemma2, gemma3, gpt2, llama, mistral, phi3, qwen2, qwen3  # noqa: F401
from . import mixtral, olmoe, qwen2moe, qwen3moe  # noqa: F401  (Mixture of Experts)
from . import cohere, gptneox, phi2, stablelm, starcoder2  # noqa: F401  (LayerNorm decoders)
from . import glm4, granite, olmo2, smollm3  # noqa: F401  (dense decoders of issue 16)
from . import deepseek2, gptoss, llama4  # noqa: F401  (issue 20)
from .base import REGISTRY, Architecture, Part, Raw, TensorPlan, architecture_for  # noqa: F401

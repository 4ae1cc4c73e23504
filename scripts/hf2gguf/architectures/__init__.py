"""One module per architecture. Importing this package registers them all."""
from . import gpt2  # noqa: F401
from .base import REGISTRY, Architecture, TensorPlan, architecture_for  # noqa: F401

"""Tiny DeepSeek-V3 (DeepseekV3ForCausalLM) checkpoints in the released layout, for generators.models (see FAMILIES there)."""
MODEL_TYPES: dict[str, str] = {}
BASE: dict[str, dict] = {}
VARIANTS: dict[str, dict] = {}

"""The backbone's config: which decoder LM, how much of it, its PCA dictionary size and LoRA settings."""

from __future__ import annotations

from dataclasses import dataclass

from ecalf.errors import ConfigError


@dataclass
class BackboneConfig:
    preset: str = "gpt2"
    """A preset name (``gpt2``, ``smollm2-135m``, ``tiny-gpt2``, ``tiny-llama``), a Hugging Face hub id,
    a local ``save_pretrained`` directory, or the path of a ``.gguf`` file."""
    pretrained: bool = True
    """False: random weights from the architecture config, drawn from the caller's torch RNG.
    The tiny presets have no pretrained weights and require ``pretrained: false``."""
    num_layers: int = 6
    """N: the first N decoder blocks are kept (plus the final norm)."""
    num_principal_embeddings: int = 500
    """K: size of the PCA dictionary of word embeddings; K <= min(hidden size, vocabulary)."""
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = None
    """Module names LoRA adapts in the ``time`` role. None: the family default, the attention's input
    projections (GPT-2 ``c_attn``; Llama-family ``q_proj``, ``k_proj``, ``v_proj``)."""
    gradient_checkpointing: bool = False
    """Recompute the trunks' block activations in the backward pass instead of keeping them: less
    training memory for more compute (docs/speed.md has the measured trade-off). Results are unchanged."""
    attention_dropout: float | None = None
    """Dropout on the trunks' attention probabilities. None: the backbone's own (GPT-2 0.1, as CALF;
    SmolLM2 0.0). On a CPU, 0 lets PyTorch's fused attention keep O(T) instead of a (B, heads, T, T)
    matrix per layer for the backward pass: much less memory with hundreds of channels (docs/speed.md)."""
    block_dropout: float = 0.0
    """Dropout on the output of every block of the trunks (the residual stream), in addition to the
    backbone's own dropout: for backbones that have none (SmolLM2: none at all; GPT-2 has 0.1 in
    every block already). 0: none, the backbone as published."""
    cache_dir: str | None = None
    """Cache of PCA dictionaries; default ``$ECALF_CACHE_DIR``, else ``~/.cache/ecalf``."""

    def __post_init__(self) -> None:
        if not isinstance(self.preset, str) or not self.preset.strip():
            raise ConfigError("backbone.preset must be a preset name, hub id, directory or .gguf path")
        for name in ("num_layers", "num_principal_embeddings", "lora_rank", "lora_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"backbone.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"backbone.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_targets is not None and (
            not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets)
        ):
            raise ConfigError(
                "backbone.lora_targets must be null (the family default) or a non-empty list of "
                f"module names such as [q_proj, v_proj], got {self.lora_targets!r}"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(
                f"backbone.gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}"
            )
        if self.attention_dropout is not None and (
            isinstance(self.attention_dropout, bool)
            or not isinstance(self.attention_dropout, (int, float))
            or not 0.0 <= self.attention_dropout < 1.0
        ):
            raise ConfigError(
                "backbone.attention_dropout must be null (the backbone's own) or a number in [0, 1), "
                f"got {self.attention_dropout!r}"
            )
        if isinstance(self.block_dropout, bool) or not 0.0 <= self.block_dropout < 1.0:
            raise ConfigError(f"backbone.block_dropout must be in [0, 1), got {self.block_dropout!r}")
        if self.cache_dir is not None and not self.cache_dir.strip():
            raise ConfigError("backbone.cache_dir must be null or a directory path")

        from ecalf.backbones.presets import PRESETS, check_shapes

        preset = PRESETS.get(self.preset)
        if preset is None:
            return  # hub ids and paths are checked when their config is read (architecture_config)
        if self.pretrained and not preset.has_weights:
            raise ConfigError(
                f"backbone preset {self.preset!r} has no pretrained weights (it is a random test "
                "architecture); set model.backbone.pretrained to false (ecalf fit and the Forecaster "
                "do when you choose the preset)"
            )
        check_shapes(self, preset.build_config())

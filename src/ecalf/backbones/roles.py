"""Trainable policy of a trunk by role (calf-reference.md step 5).

``time`` (CALF's target branch): LoRA on the attention's input projections + every norm (LayerNorm /
RMSNorm weights and biases) + the learned position embeddings; everything else frozen.
``text`` (source branch): only the learned position embeddings; a rotary model (Llama family) has
none, so its text trunk is wholly frozen.

Default LoRA targets are the projections that map a token to its queries, keys and values — GPT-2's
fused ``c_attn`` (what CALF adapts), and for the Llama family (Llama, Mistral, Qwen2, SmolLM2, ...)
its split equivalent ``q_proj``, ``k_proj``, ``v_proj``. The attention output projection and the MLP
stay frozen, as ``c_proj`` and the MLP do in CALF. ``BackboneConfig.lora_targets`` overrides this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from torch import nn

from ecalf.errors import BackboneError, ConfigError

if TYPE_CHECKING:
    from ecalf.backbones.config import BackboneConfig
    from ecalf.backbones.trunk import Trunk

Role = Literal["time", "text"]

# Module names of the attention input projections, in order of preference (first match wins).
_ATTENTION_INPUT_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("c_attn",),  # GPT-2 (fused q, k, v)
    ("qkv_proj",),  # Phi-3 (fused)
    ("query_key_value",),  # GPT-NeoX, Falcon (fused)
    ("q_proj", "k_proj", "v_proj"),  # Llama family, Mistral, Qwen2/3, Gemma, OLMo, Phi, OPT, ...
)


def _leaf_names(trunk: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in trunk.named_modules() if name}


def default_lora_targets(trunk: Trunk) -> list[str]:
    """The attention input projections of the trunk's family (see the module doc)."""
    names = _leaf_names(trunk)
    for group in _ATTENTION_INPUT_PROJECTIONS:
        if all(n in names for n in group):
            return list(group)
    raise BackboneError(
        f"no default LoRA targets for the {trunk.family!r} family; set backbone.lora_targets to its "
        "attention projection module names"
    )


def norm_parameters(trunk: nn.Module) -> list[nn.Parameter]:
    """Weights and biases of every normalisation layer (LayerNorm, RMSNorm, ...)."""
    return [
        p
        for m in trunk.modules()
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or type(m).__name__.endswith("Norm")
        for p in m.parameters(recurse=False)
    ]


def lora_parameters(trunk: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in trunk.named_parameters() if "lora_" in name]


def apply_role(trunk: Trunk, role: Role, config: BackboneConfig) -> Trunk:
    """Set the trainable parameters of ``trunk`` for ``role`` (in place; returns the same trunk).

    ``time`` injects LoRA (peft) into the trunk's modules, so its state-dict keys stay those of the
    plain trunk plus ``.base_layer.`` / ``lora_A`` / ``lora_B`` entries; ``forward`` is unchanged.
    Both roles switch the trunk's gradient checkpointing as ``config.gradient_checkpointing`` says.
    """
    if lora_parameters(trunk):
        raise ValueError("apply_role was already applied to this trunk")
    if role in ("time", "text"):
        trunk.set_gradient_checkpointing(config.gradient_checkpointing)
    if role == "text":
        trunk.requires_grad_(False)
        for p in trunk.position_parameters():
            p.requires_grad_(True)
        return trunk
    if role != "time":
        raise ConfigError(f"backbone role must be 'time' or 'text', got {role!r}")

    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    targets = list(config.lora_targets) if config.lora_targets else default_lora_targets(trunk)
    matched = [m for name, m in trunk.named_modules() if name.rsplit(".", 1)[-1] in targets]
    if not matched:
        linear = sorted(
            name.rsplit(".", 1)[-1]
            for name, m in trunk.named_modules()
            if isinstance(m, (nn.Linear, Conv1D)) and name
        )
        raise ConfigError(
            f"backbone.lora_targets {targets} match no module of this {trunk.family} trunk; its "
            f"projection modules are: {', '.join(sorted(set(linear)))}"
        )
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=all(isinstance(m, Conv1D) for m in matched),  # GPT-2's Conv1D stores W transposed
        bias="none",
    )
    trunk.requires_grad_(False)
    inject_adapter_in_model(lora, trunk)
    trunk.train(trunk.training)  # the injected modules (LoRA dropout) start in training mode
    for p in lora_parameters(trunk) + norm_parameters(trunk) + trunk.position_parameters():
        p.requires_grad_(True)
    return trunk

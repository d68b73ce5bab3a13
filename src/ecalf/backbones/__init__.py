"""Backbones: any Hugging Face decoder LM, truncated to N blocks, with CALF's trainable policy.

- :class:`BackboneConfig` — which LM (preset, hub id, local directory, GGUF file), N, K, LoRA settings.
- :func:`architecture_config` — its HF config truncated to N layers, without loading weights.
- :class:`Trunk` — the first N blocks + final norm, fed with ``inputs_embeds``, returning N + 1 hidden states.
- :func:`apply_role` — ``time`` (LoRA + norms + position embeddings) or ``text`` (position embeddings).
- :func:`load_pretrained_weights` — the one loader: trunk weights + the (K, D) principal embeddings.
- :func:`principal_embeddings` — the PCA dictionary (exact, deterministic, cached on disk).

See docs/backbones.md.
"""

from ecalf.backbones.config import BackboneConfig
from ecalf.backbones.loading import describe_backbone, load_pretrained_weights
from ecalf.backbones.pca import cached_principal_embeddings, default_cache_dir, principal_embeddings
from ecalf.backbones.presets import PRESETS, Preset, architecture_config, resolve_source
from ecalf.backbones.roles import Role, apply_role, default_lora_targets
from ecalf.backbones.trunk import Trunk

__all__ = [
    "PRESETS",
    "BackboneConfig",
    "Preset",
    "Role",
    "Trunk",
    "apply_role",
    "architecture_config",
    "cached_principal_embeddings",
    "default_cache_dir",
    "default_lora_targets",
    "describe_backbone",
    "load_pretrained_weights",
    "principal_embeddings",
    "resolve_source",
]

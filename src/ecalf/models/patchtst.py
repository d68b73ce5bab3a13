"""PatchTST: channel-independent patch Transformer with a flatten head.

Nie et al., "A Time Series is Worth 64 Words: Long-term Forecasting with Transformers", ICLR 2023
(official code: github.com/yuqinie98/PatchTST, ``PatchTST_supervised``). Each channel is forecast
on its own with shared weights:
instance norm (RevIN, no affine) -> pad the end by repeating the last value ``stride`` times ->
N = (L - P) // S + 2 patches of length P -> Linear(P -> D) + learned positional encoding ->
post-norm Transformer encoder (BatchNorm by default, as the official code) -> flatten (D * N) ->
Linear(D * N -> H) -> de-normalise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ecalf.config import ModelConfig
from ecalf.errors import ConfigError
from ecalf.models.base import ForecastModel, ForecastOutput, InstanceNorm, LossName, regression_loss
from ecalf.registry import register_model


@dataclass
class PatchTSTConfig(ModelConfig):
    patch_length: int = 16
    patch_stride: int = 8
    d_model: int = 128
    num_heads: int = 16
    num_layers: int = 3
    ff_dim: int = 256
    dropout: float = 0.2
    """On the embedded patches, both residual branches and inside the feed-forward block."""
    attention_dropout: float = 0.0
    head_dropout: float = 0.0
    norm: Literal["batch", "layer"] = "batch"
    """Normalisation inside each encoder layer: BatchNorm over (batch, patches) as the official
    code, or LayerNorm."""
    loss: LossName = "mse"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("patch_length", "patch_stride", "d_model", "num_heads", "num_layers", "ff_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.num_heads ({self.num_heads})"
            )
        if self.patch_length > self.context_length + self.patch_stride:
            raise ConfigError(
                f"model.patch_length ({self.patch_length}) is longer than the padded context "
                f"(context_length + patch_stride = {self.context_length + self.patch_stride}); "
                "use a shorter patch or a longer context"
            )
        for name in ("dropout", "attention_dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def num_patches(self) -> int:
        """N = (L - P) // S + 2: the patches of the context padded at the end by S repeated values."""
        return (self.context_length - self.patch_length) // self.patch_stride + 2


def make_patches(x: Tensor, patch_length: int, stride: int) -> Tensor:
    """Pad the end of each series with ``stride`` copies of its last value, then cut patches."""
    # x: (B, C, L)
    padded = F.pad(x, (0, stride), mode="replicate")  # (B, C, L + S)
    return padded.unfold(-1, patch_length, stride)  # (B, C, N, P)


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over the feature axis of token sequences: statistics over (batch, tokens)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(d_model)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B', N, D)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)  # (B', N, D)


class EncoderLayer(nn.Module):
    """Post-norm Transformer encoder layer: x = norm(x + attn(x)); x = norm(x + ff(x))."""

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__()
        D = config.d_model
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(D, 3 * D)
        self.attention_out = nn.Linear(D, D)
        self.feed_forward = nn.Sequential(
            nn.Linear(D, config.ff_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ff_dim, D),
        )
        self.dropout = nn.Dropout(config.dropout)
        norm = TokenBatchNorm if config.norm == "batch" else nn.LayerNorm
        self.attention_norm = norm(D)
        self.feed_forward_norm = norm(D)

    def attend(self, x: Tensor) -> Tensor:
        # x: (B', N, D)
        Bp, N, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B', N, D) each
        q, k, v = (t.view(Bp, N, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (B', h, N, D/h)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B', h, N, D/h)
        y = y.transpose(1, 2).reshape(Bp, N, D)  # (B', N, D)
        return self.attention_out(y)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B', N, D)
        x = self.attention_norm(x + self.dropout(self.attend(x)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))  # (B', N, D)


@register_model(
    "patchtst",
    PatchTSTConfig,
    "PatchTST (Nie et al., ICLR 2023): channel-independent patch Transformer, RevIN, flatten head.",
    tiny_options={"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 32},
)
class PatchTST(ForecastModel):
    config: PatchTSTConfig

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__(config)
        D, N = config.d_model, config.num_patches
        self.norm = InstanceNorm()
        self.patch_embedding = nn.Linear(config.patch_length, D)
        self.position = nn.Parameter(torch.empty(N, D))
        nn.init.uniform_(self.position, -0.02, 0.02)  # the official learned encoding's init
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.head = nn.Linear(D * N, config.prediction_length)
        self.head_dropout = nn.Dropout(config.head_dropout)

    def forward(self, past_values: Tensor, future_values: Tensor | None = None) -> ForecastOutput:
        self.check_input(past_values, future_values)
        cfg = self.config
        B, _, C = past_values.shape
        x, stats = self.norm.normalize(past_values)  # (B, L, C)
        x = x.transpose(1, 2)  # (B, C, L)
        patches = make_patches(x, cfg.patch_length, cfg.patch_stride)  # (B, C, N, P)
        tokens = patches.reshape(B * C, cfg.num_patches, cfg.patch_length)  # (B*C, N, P)
        z = self.embedding_dropout(self.patch_embedding(tokens) + self.position)  # (B*C, N, D)
        for layer in self.layers:
            z = layer(z)  # (B*C, N, D)
        z = z.reshape(B, C, cfg.num_patches, cfg.d_model).transpose(2, 3)  # (B, C, D, N)
        out = self.head_dropout(self.head(z.flatten(start_dim=2)))  # (B, C, H)
        prediction = self.norm.denormalize(out.transpose(1, 2), stats)  # (B, H, C)
        if future_values is None:
            return ForecastOutput(prediction)
        loss = regression_loss(cfg.loss, prediction, future_values)
        return ForecastOutput(prediction, loss, {cfg.loss: loss})

"""iTransformer: attention across variates, each variate's whole window one token.

Liu et al., "iTransformer: Inverted Transformers Are Effective for Time Series Forecasting",
ICLR 2024 (official code: github.com/thuml/iTransformer). Data flow:
instance norm (non-stationary normalisation, no affine) -> (B, L, C) -> (B, C, L) ->
Linear(L -> D) per variate -> post-norm Transformer encoder over the C variate tokens (no positional
encoding, so the model is equivariant to the order of the channels) -> final LayerNorm ->
Linear(D -> H) -> (B, H, C) -> de-normalise.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ecalf.config import ModelConfig
from ecalf.errors import ConfigError
from ecalf.models.base import ForecastModel, ForecastOutput, InstanceNorm, LossName, regression_loss
from ecalf.registry import register_model


@dataclass
class ITransformerConfig(ModelConfig):
    d_model: int = 128
    num_heads: int = 8
    num_layers: int = 2
    ff_dim: int = 128
    dropout: float = 0.1
    """On the variate embeddings, attention weights, residual branches and feed-forward block."""
    use_norm: bool = True
    """Per-window instance normalisation of the input and de-normalisation of the forecast."""
    loss: LossName = "mse"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_model", "num_heads", "num_layers", "ff_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@register_model(
    "itransformer",
    ITransformerConfig,
    "iTransformer (Liu et al., ICLR 2024): variates as tokens, Transformer encoder, linear head.",
    tiny_options={"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 32},
)
class ITransformer(ForecastModel):
    config: ITransformerConfig

    def __init__(self, config: ITransformerConfig) -> None:
        super().__init__(config)
        D = config.d_model
        self.norm = InstanceNorm()
        self.embedding = nn.Linear(config.context_length, D)
        self.embedding_dropout = nn.Dropout(config.dropout)
        # Separately built layers (nn.TransformerEncoder would deep-copy one layer: identical init).
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                D, config.num_heads, config.ff_dim, config.dropout, activation="gelu", batch_first=True
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(D)
        self.projection = nn.Linear(D, config.prediction_length)

    def forward(self, past_values: Tensor, future_values: Tensor | None = None) -> ForecastOutput:
        self.check_input(past_values, future_values)
        cfg = self.config
        x = past_values
        if cfg.use_norm:
            x, stats = self.norm.normalize(x)  # (B, L, C)
        tokens = self.embedding_dropout(self.embedding(x.transpose(1, 2)))  # (B, C, D)
        for layer in self.layers:
            tokens = layer(tokens)  # (B, C, D)
        out = self.projection(self.final_norm(tokens))  # (B, C, H)
        prediction = out.transpose(1, 2)  # (B, H, C)
        if cfg.use_norm:
            prediction = self.norm.denormalize(prediction, stats)  # (B, H, C)
        if future_values is None:
            return ForecastOutput(prediction)
        loss = regression_loss(cfg.loss, prediction, future_values)
        return ForecastOutput(prediction, loss, {cfg.loss: loss})

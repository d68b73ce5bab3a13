"""CALF: cross-modal fine-tuning of a truncated decoder LLM for multivariate forecasting.

Liu et al., "Aligning LLMs for Time Series Forecasting via Cross-modal Fine-Tuning", AAAI 2025.
What is computed follows ``calf-reference.md`` exactly; the official code's defects are not copied:
LoRA is active, the text branch is never run at inference, and nothing here depends on train/eval
mode except dropout.

Data flow (shape letters: B batch, L context, H horizon, C channels, D width, K dictionary size):
instance norm -> channels as tokens, Linear(L -> D) + one encoder layer -> x_time (B, C, D)
-> cross-attention onto the K principal word embeddings -> x_text (B, C, D)
-> time branch (LoRA) and text branch (frozen) of the truncated LLM, N + 1 hidden states each
-> residual + shared Linear(D -> H) head -> de-normalise.
Loss = task + w_out * output consistency + w_feat * sum_k decay^(N-k) l(P_time_k h_time_k, P_text_k h_text_k).

Covariates (channels ``[targets | P past | K known-future]``, :mod:`ecalf.models.base`; this K is
not the dictionary's): every channel is a token, so the LLM attends from the targets' tokens to the
covariates'. Only the targets' horizon is in the task loss (a covariate's future is NaN there) and in
the output-consistency term; a covariate's forecast is ignored (feature distillation still aligns
every token). A known-future covariate's token is built from its context *and* horizon: both
normalised by the context's statistics (the same instance norm as every token), the L + H values go
through their own Linear(L + H -> D) (``future_embed``, created only when K > 0 and after every other
module, so K = 0 is CALF exactly) in place of Linear(L -> D), before the encoder layer; the
cross-modal match and the text branch take that token sequence as they take any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecalf.backbones import BackboneConfig, Trunk, apply_role, architecture_config, load_pretrained_weights
from ecalf.config import ModelConfig
from ecalf.data import WindowDataset
from ecalf.errors import ConfigError
from ecalf.models.alignment import (
    AlignmentScore,
    ContrastiveLoss,
    DynamicCrossModalMatch,
    LevelWeights,
    adaptive_weight,
    cosine_distance,
    window_statistics,
)
from ecalf.models.base import ForecastModel, ForecastOutput, InstanceNorm, LossName, regression_loss
from ecalf.models.linear import LinearConfig, LinearForecast
from ecalf.registry import register_model


@dataclass
class CALFConfig(ModelConfig):
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder_heads: int = 12
    """Heads of the time-token encoder layer and of the cross-modal attention (D must divide)."""
    encoder_ff_dim: int = 2048
    dropout: float = 0.1
    loss: LossName = "l1"
    """l for all three terms: L1 for ETT, SmoothL1 (beta 1) for Weather, Electricity and Traffic."""
    output_weight: float = 1.0
    feature_weight: float = 0.01
    feature_decay: float = 0.8
    """Level k of N gets decay^(N - k): the deepest level weighs 1."""
    projection_learning_rate: float = 1e-4
    """The per-level projections train at this fixed rate (not scheduled), as in the official code."""

    # -- Enhanced CALF (docs/enhanced-calf.md). Every switch off = CALF exactly. -----------------
    dynamic_match: bool = False
    """Enhancement 1: dynamic-attention cross-modal matching (the two parts below)."""
    match_adaptive_weights: bool = True
    """Adaptive weight generator: per-token, per-head temperatures and mixing weights."""
    match_alignment_degree: bool = True
    """Alignment-degree predictor a in (degree_min, 1): x_text = a * x_att + (1 - a) * x_time."""
    degree_min: float = 0.5
    """Lower bound of a. At 0 the gate can close (a -> 0, x_text = x_time), which satisfies every
    alignment term trivially (docs/enhanced-calf.md "The alignment-degree gate")."""
    degree_aux_weight: float = 0.0
    """Weight of the auxiliary regression of a onto the branches' detached final cosine similarity."""
    multilevel_distillation: bool = False
    """Enhancement 2: hierarchical distillation options below + adaptive-temperature contrastive loss."""
    level_weights: Literal["fixed", "learned"] = "fixed"
    distillation_distance: Literal["loss", "cosine"] = "loss"
    """``loss``: the model's regression loss (CALF); ``cosine``: 1 - cosine similarity."""
    detach_teacher: bool = False
    """Stop the distillation gradient into the text (teacher) branch's hidden states."""
    contrastive_weight: float = 0.1
    contrastive_levels: list[int] | None = None
    """Levels (0 = embeddings ... N = last block; negative counts from the end); null = all levels."""
    temperature_init: float = 0.1
    temperature_min: float = 0.01
    temperature_max: float = 1.0
    adaptive_alignment: bool = False
    """Enhancement 3: alignment-score-driven weights w = w0 * clamp(1 + beta (1 - 2 s), min, max)."""
    alignment_beta: float = 1.0
    alignment_momentum: float = 0.9
    weight_min_factor: float = 0.0
    weight_max_factor: float = 2.0

    # -- Beyond the paper, off in the paper presets ----------------------------------------------
    linear_skip: bool = False
    """A DLinear-style Linear(L -> H) forecast on the normalised window that the LLM branch corrects."""
    skip_init: Literal["random", "ridge"] = "random"
    """How ``linear_skip`` starts. ``random``: torch's Linear init, its bias on the normalised scale.
    ``ridge``: the skip is the ``linear`` baseline (ecalf.models.linear.LinearForecast), fitted in
    closed form on the training windows (ridge strength chosen on validation) before the first step,
    its bias on the data's scale; the LLM's correction (the head) starts at zero, so the model starts
    as the ``linear`` forecast and training moves it only as far as validation confirms."""
    backbone_mode: Literal["llm", "random", "none", "attention"] = "llm"
    """Ablations (Tan et al., NeurIPS 2024): ``random`` = randomly initialised backbone, ``none`` =
    backbone removed (tokens go straight to the head), ``attention`` = one attention layer instead."""

    @property
    def aligns(self) -> bool:
        """Whether any alignment term has a weight. When none has (CALF's few-shot recipe:
        ``output_weight = feature_weight = 0``), the model is the time branch alone: the text branch,
        the cross-modal match, the per-level projections and the enhancements' modules are not built
        and not run, and the loss is the task loss."""
        contrastive = self.multilevel_distillation and self.contrastive_weight > 0
        degree = self.dynamic_match and self.match_alignment_degree and self.degree_aux_weight > 0
        return self.output_weight > 0 or self.feature_weight > 0 or contrastive or degree

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.temperature_min < self.temperature_init < self.temperature_max:
            raise ConfigError("model.temperature_min < temperature_init < temperature_max must hold, all > 0")
        if not 0.0 <= self.alignment_momentum < 1.0:
            raise ConfigError(f"model.alignment_momentum must be in [0, 1), got {self.alignment_momentum}")
        if not 0.0 <= self.weight_min_factor <= 1.0 <= self.weight_max_factor:
            raise ConfigError("model.weight_min_factor <= 1 <= model.weight_max_factor must hold")
        if not 0.0 <= self.degree_min < 1.0:
            raise ConfigError(f"model.degree_min must be in [0, 1), got {self.degree_min}")
        if self.encoder_heads <= 0 or self.encoder_ff_dim <= 0:
            raise ConfigError("model.encoder_heads and model.encoder_ff_dim must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.skip_init == "ridge" and not self.linear_skip:
            raise ConfigError("model.skip_init=ridge initialises the linear skip; set model.linear_skip=true")
        for name in (
            "output_weight",
            "feature_weight",
            "feature_decay",
            "projection_learning_rate",
            "contrastive_weight",
            "degree_aux_weight",
            "alignment_beta",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")


class TimeTokenEncoder(nn.Module):
    """Each channel's normalised window becomes one token: Linear(L -> D) + one post-norm encoder layer
    (which also takes the known-future covariates' tokens, embedded by the model)."""

    def __init__(self, context_length: int, hidden_size: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.embed = nn.Linear(context_length, hidden_size)
        self.layer = nn.TransformerEncoderLayer(
            hidden_size, heads, ff_dim, dropout, activation="relu", batch_first=True
        )

    def forward(self, tokens: Tensor, future_tokens: Tensor | None = None) -> Tensor:
        """``tokens`` (B, C, L); ``future_tokens`` (B, K, D), already embedded, replace the last K."""
        if future_tokens is None:
            return self.layer(self.embed(tokens))  # (B, C, D)
        own = self.embed(tokens[:, : tokens.shape[1] - future_tokens.shape[1]])  # (B, C - K, D)
        return self.layer(torch.cat([own, future_tokens], dim=1))  # (B, C, D)


class AttentionTrunk(nn.Module):
    """Ablation ``attention``: one trainable attention layer in place of the LLM (Tan et al.).

    Returns two levels like a one-block trunk: its input and ``LayerNorm(x + attention(x))``.
    """

    def __init__(self, hidden_size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_size, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, inputs_embeds: Tensor) -> tuple[Tensor, Tensor]:
        attended, _ = self.attention(inputs_embeds, inputs_embeds, inputs_embeds, need_weights=False)
        return inputs_embeds, self.norm(inputs_embeds + attended)


@register_model(
    "calf",
    CALFConfig,
    "CALF (AAAI 2025): LoRA-tuned truncated LLM with cross-modal match and alignment losses",
    tiny_options={
        "backbone": {
            "preset": "tiny-gpt2",
            "pretrained": False,
            "num_layers": 2,
            "num_principal_embeddings": 16,
        },
        "encoder_heads": 4,
        "encoder_ff_dim": 64,
    },
)
class CALF(ForecastModel):
    """CALF, and Enhanced CALF through the switches of :class:`CALFConfig` (one implementation)."""

    config: CALFConfig
    principal_embeddings: Tensor
    takes_future_covariates = True

    def __init__(self, config: CALFConfig) -> None:
        super().__init__(config)
        arch = architecture_config(config.backbone)
        hidden = arch.hidden_size
        if hidden % config.encoder_heads:
            raise ConfigError(
                f"model.encoder_heads={config.encoder_heads} must divide the backbone width {hidden}"
            )
        self.time_trunk: nn.Module | None = None
        self.text_trunk: nn.Module | None = None
        if config.backbone_mode in ("llm", "random"):
            self.time_trunk = apply_role(Trunk(arch, config.backbone.block_dropout), "time", config.backbone)
            limit = self.time_trunk.max_positions
            if limit is not None and config.num_channels > limit:
                raise ConfigError(
                    f"the data has {config.num_channels} channels but backbone {config.backbone.preset!r} "
                    f"has only {limit} learned positions, and each channel is one token; use a backbone "
                    "with more positions (gpt2: 1024) or rotary positions (smollm2-135m, tiny-llama), "
                    "or fewer channels"
                )
            if config.aligns:
                self.text_trunk = apply_role(
                    Trunk(arch, config.backbone.block_dropout), "text", config.backbone
                )
            num_levels = arch.num_hidden_layers + 1
        elif config.backbone_mode == "attention":
            self.time_trunk = AttentionTrunk(hidden, config.encoder_heads, config.dropout)
            if config.aligns:
                self.text_trunk = AttentionTrunk(hidden, config.encoder_heads, config.dropout)
            num_levels = 2
        else:  # "none": the tokens go straight to the head
            num_levels = 1
        self.norm = InstanceNorm()
        self.encoder = TimeTokenEncoder(
            config.context_length, hidden, config.encoder_heads, config.encoder_ff_dim, config.dropout
        )
        self.head = nn.Linear(hidden, config.prediction_length)
        self.time_projections = nn.ModuleList()
        self.text_projections = nn.ModuleList()
        self.match: DynamicCrossModalMatch | None = None
        self.level_weights: LevelWeights | None = None
        self.contrastive: ContrastiveLoss | None = None
        self.alignment: AlignmentScore | None = None
        if config.aligns:
            self._build_alignment(hidden, num_levels)
        self.skip = nn.Linear(config.context_length, config.prediction_length) if config.linear_skip else None
        if config.skip_init == "ridge":  # the LLM's correction starts at zero: the model is the ridge fit
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        # Created last and only with known-future covariates: without them, CALF's weights and random draws.
        self.future_embed = (
            nn.Linear(config.context_length + config.prediction_length, hidden)
            if config.num_future_covariates
            else None
        )
        self._epoch_sums: dict[str, Tensor | float] = {}
        self._epoch_count = 0

    def _build_alignment(self, hidden: int, num_levels: int) -> None:
        """What only the alignment terms use: dictionary, projections, match, level weights, enhancements."""
        config = self.config
        self.register_buffer(
            "principal_embeddings", torch.zeros(config.backbone.num_principal_embeddings, hidden)
        )
        self.time_projections.extend(nn.Linear(hidden, hidden, bias=False) for _ in range(num_levels))
        self.text_projections.extend(nn.Linear(hidden, hidden, bias=False) for _ in range(num_levels))
        # Created last, so that CALF's own weights are the same with or without the enhancements.
        self.match = DynamicCrossModalMatch(
            hidden,
            config.encoder_heads,
            adaptive_weights=config.dynamic_match and config.match_adaptive_weights,
            alignment_degree=config.dynamic_match and config.match_alignment_degree,
            degree_min=config.degree_min,
        )
        distill = config.multilevel_distillation
        self.level_weights = LevelWeights(
            num_levels, config.feature_decay, learned=distill and config.level_weights == "learned"
        )
        if distill and config.contrastive_weight > 0:
            self.contrastive = ContrastiveLoss(
                config.temperature_init, config.temperature_min, config.temperature_max
            )
            levels = config.contrastive_levels if config.contrastive_levels is not None else range(num_levels)
            self.contrastive_levels = sorted({range(num_levels)[k] for k in levels})
        if config.adaptive_alignment:
            self.alignment = AlignmentScore(config.alignment_momentum)

    # -- weights ----------------------------------------------------------------------------------

    def load_pretrained(self) -> None:
        """Copy the backbone's pretrained (or seeded random) weights into both branches + the dictionary."""
        backbone = self.config.backbone
        if self.config.backbone_mode == "random":
            backbone = dataclasses.replace(backbone, pretrained=False)
        # Random backbone weights depend on the run seed only, not on how many random numbers this
        # model's own construction drew (so calf and ecalf share them), and leave the global RNG as is.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed())
            state, dictionary = load_pretrained_weights(backbone)
        for trunk in (self.time_trunk, self.text_trunk):
            if isinstance(trunk, AttentionTrunk) or trunk is None:
                continue
            _load_base_weights(trunk, state)
        if isinstance(self.time_trunk, Trunk) and isinstance(self.text_trunk, Trunk):
            _share_frozen_weights(self.time_trunk, self.text_trunk)
        if self.config.aligns:
            self.principal_embeddings.copy_(dictionary)

    def initialize_from_data(self, train_set: WindowDataset, val_set: WindowDataset) -> dict[str, float]:
        """``skip_init: ridge``: the skip becomes the ``linear`` baseline fitted on ``train_set`` (its
        ridge strength chosen on ``val_set``); returns the strength chosen."""
        if self.skip is None or self.config.skip_init != "ridge":
            return {}
        cfg = self.config
        ridge = LinearForecast(LinearConfig(cfg.context_length, cfg.prediction_length, cfg.num_channels))
        fit = ridge.fit_closed_form(train_set, val_set)
        with torch.no_grad():
            self.skip.weight.copy_(ridge.weight)  # (H, L)
            self.skip.bias.copy_(ridge.bias)  # (H,), on the data's scale
        return {"skip_ridge": fit.values["ridge"], "skip_train_mse": fit.train_loss}

    def parameter_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        projections = {id(p) for m in (self.time_projections, self.text_projections) for p in m.parameters()}
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in projections]
        proj = [p for p in self.parameters() if p.requires_grad and id(p) in projections]
        return [
            {"params": main, "lr": learning_rate, "name": "model"},
            {
                "params": proj,
                "lr": self.config.projection_learning_rate,
                "name": "projections",
                "fixed_lr": True,
            },
        ]

    # -- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        past_values: Tensor,
        future_values: Tensor | None = None,
        future_covariates: Tensor | None = None,
    ) -> ForecastOutput:
        self.check_input(past_values, future_values, future_covariates)
        x, stats = self.norm.normalize(past_values)  # (B, L, C)
        tokens = x.transpose(1, 2)  # (B, C, L)
        base = self._skip(tokens)  # (B, C, H) or None
        x_time = self.encoder(tokens, self._future_tokens(tokens, future_covariates, stats))  # (B, C, D)
        hidden_time = self._branch(self.time_trunk, x_time)  # N + 1 x (B, C, D)
        y_time = self._forecast(hidden_time, x_time, base, stats)  # (B, H, C)
        if future_values is None:
            return ForecastOutput(prediction=y_time)

        cfg = self.config
        task = regression_loss(cfg.loss, y_time, future_values)
        if self.match is None:  # no alignment term has a weight: the time branch alone
            return ForecastOutput(prediction=y_time, loss=task, loss_parts={"task": task.detach()})
        statistics = window_statistics(past_values) if self.match.generator is not None else None
        x_text, degree = self.match(x_time, self.principal_embeddings, statistics)  # (B, C, D)
        hidden_text = self._branch(self.text_trunk, x_text)
        y_text = self._forecast(hidden_text, x_text, base, stats)

        output = regression_loss(cfg.loss, *self._target_channels(y_time, y_text))
        feature, contrastive = self._alignment_terms(hidden_time, hidden_text)
        w_out: Tensor | float = cfg.output_weight
        w_feat: Tensor | float = cfg.feature_weight
        w_con: Tensor | float = cfg.contrastive_weight
        if self.alignment is not None:
            score = (
                self.alignment.update(hidden_time[-1], hidden_text[-1])
                if self.training
                else self.alignment.value
            )
            lo, hi, beta = cfg.weight_min_factor, cfg.weight_max_factor, cfg.alignment_beta
            w_out = adaptive_weight(cfg.output_weight, score, beta, lo, hi)
            w_feat = adaptive_weight(cfg.feature_weight, score, beta, lo, hi)
            w_con = adaptive_weight(cfg.contrastive_weight, score, beta, lo, hi)
        loss = task + w_out * output + w_feat * feature
        parts = {"task": task.detach(), "output": output.detach(), "feature": feature.detach()}
        if contrastive is not None:
            loss = loss + w_con * contrastive
            parts["contrastive"] = contrastive.detach()
        if degree is not None and cfg.degree_aux_weight > 0:
            with torch.no_grad():
                target = F.cosine_similarity(hidden_time[-1], hidden_text[-1], dim=-1).clamp(0.0, 1.0)
            aux = F.mse_loss(degree, target)
            loss = loss + cfg.degree_aux_weight * aux
            parts["degree"] = aux.detach()
        if self.training:
            self._accumulate(w_out, w_feat, w_con if contrastive is not None else None, degree)
        return ForecastOutput(prediction=y_time, loss=loss, loss_parts=parts)

    def _target_channels(self, *forecasts: Tensor) -> tuple[Tensor, ...]:
        """The target channels of (B, H, C) forecasts: the output-consistency term compares those only
        (a covariate's forecast is nobody's); all of them, as they are, without covariates."""
        T = self.num_targets
        return forecasts if self.config.num_channels == T else tuple(y[..., :T] for y in forecasts)

    def _future_tokens(
        self, tokens: Tensor, future_covariates: Tensor | None, stats: tuple[Tensor, Tensor]
    ) -> Tensor | None:
        """The known-future covariates' tokens (B, K, D) from their normalised context ``tokens[:, -K:]``
        and horizon (normalised by the context's statistics); None without such covariates."""
        if self.future_embed is None or future_covariates is None:
            return None
        k = future_covariates.shape[-1]
        mean, std = (s[..., -k:] for s in stats)  # (B, 1, K) each
        horizon = ((future_covariates.to(tokens.dtype) - mean) / std).transpose(1, 2)  # (B, K, H)
        series = torch.cat([tokens[:, -k:], horizon], dim=2)  # (B, K, L + H)
        return self.future_embed(series)  # (B, K, D)

    def _skip(self, tokens: Tensor) -> Tensor | None:
        """The linear skip's forecast on the normalised tokens (B, C, L) -> (B, C, H); a ridge-initialised
        skip's bias is added after de-normalisation instead (:meth:`_forecast`)."""
        if self.skip is None:
            return None
        if self.config.skip_init == "ridge":
            return F.linear(tokens, self.skip.weight)
        return self.skip(tokens)

    def _branch(self, trunk: nn.Module | None, tokens: Tensor) -> tuple[Tensor, ...]:
        return (tokens,) if trunk is None else tuple(trunk(tokens))

    def _forecast(
        self, hidden: tuple[Tensor, ...], tokens: Tensor, base: Tensor | None, stats: tuple[Tensor, Tensor]
    ) -> Tensor:
        features = hidden[-1] if self.time_trunk is None else hidden[-1] + tokens  # residual, (B, C, D)
        y = self.head(features)  # (B, C, H)
        if base is not None:
            y = y + base
        y = self.norm.denormalize(y.transpose(1, 2), stats)  # (B, H, C)
        if self.skip is not None and self.config.skip_init == "ridge":
            # W (x - mean) / std * std + mean + b: the linear baseline's forecast, plus the correction.
            y = y + self.skip.bias[:, None]  # (H, 1) over (B, H, C)
        return y

    def _alignment_terms(
        self, hidden_time: tuple[Tensor, ...], hidden_text: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor | None]:
        """Hierarchical feature distillation over all levels, and the contrastive term if enabled."""
        cfg = self.config
        distill = cfg.multilevel_distillation
        assert self.level_weights is not None  # built whenever the model aligns
        weights = self.level_weights()
        feature = hidden_time[0].new_zeros(())
        projected: list[tuple[Tensor, Tensor]] = []
        for k, (h_time, h_text) in enumerate(zip(hidden_time, hidden_text, strict=True)):
            if distill and cfg.detach_teacher:
                h_text = h_text.detach()
            p_time, p_text = self.time_projections[k](h_time), self.text_projections[k](h_text)
            projected.append((p_time, p_text))
            if distill and cfg.distillation_distance == "cosine":
                distance = cosine_distance(p_time, p_text)
            else:
                distance = regression_loss(cfg.loss, p_time, p_text)
            feature = feature + weights[k] * distance
        if self.contrastive is None:
            return feature, None
        contrastive = torch.stack([self.contrastive(*projected[k]) for k in self.contrastive_levels]).mean()
        return feature, contrastive

    # -- logging of adapted values ----------------------------------------------------------------

    def _accumulate(
        self,
        w_out: Tensor | float,
        w_feat: Tensor | float,
        w_con: Tensor | float | None,
        degree: Tensor | None,
    ) -> None:
        """Sum the adapted values of this step on their device; read once per epoch (no host sync)."""
        values: dict[str, Tensor | float] = {}
        if self.alignment is not None:
            values.update(
                alignment_score=self.alignment.value.clone(), weight_output=w_out, weight_feature=w_feat
            )
            if w_con is not None:
                values["weight_contrastive"] = w_con
        if degree is not None:
            values["alignment_degree"] = degree.detach().mean()
        for key, value in values.items():
            self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + value
        self._epoch_count += 1

    def training_values(self) -> dict[str, float]:
        """Epoch means of the adapted values since the last call, plus their current state."""
        values = {k: float(v) / max(self._epoch_count, 1) for k, v in self._epoch_sums.items()}
        self._epoch_sums, self._epoch_count = {}, 0
        if self.contrastive is not None:
            values["temperature"] = float(self.contrastive.temperature.detach())
        if self.level_weights is not None and self.level_weights.logits is not None:
            for k, w in enumerate(self.level_weights().detach().tolist()):
                values[f"level_weight_{k}"] = w
        return values


def _load_base_weights(trunk: nn.Module, state: dict[str, Tensor]) -> None:
    """Load plain Trunk weights into a (possibly LoRA-wrapped) trunk: LoRA's own weights keep their init."""
    own = trunk.state_dict()
    mapped: dict[str, Tensor] = {}
    for key in own:
        base = key.replace(".base_layer.", ".")
        if base in state:
            mapped[key] = state[base]
    missing = [k for k in own if k not in mapped and "lora_" not in k]
    if missing:
        raise RuntimeError(f"backbone weights lack {missing[:3]}... (adapter/trunk mismatch)")
    trunk.load_state_dict(mapped, strict=False)


def _share_frozen_weights(time_trunk: nn.Module, text_trunk: nn.Module) -> None:
    """Let the text trunk use the time trunk's frozen pretrained tensors instead of its own copy.

    Both branches start from the same weights and neither trains these (the time branch trains LoRA
    adapters beside them), so one copy serves both; norms and position embeddings, which a branch
    trains, stay per branch. Called after the weights are loaded, when the two copies are equal.
    """
    time_params = dict(time_trunk.named_parameters())
    for name, module in text_trunk.named_modules():
        for attr, param in list(module.named_parameters(recurse=False)):
            key = f"{name}.{attr}" if name else attr
            parts = key.rsplit(".", 1)
            shared = time_params.get(key)
            if shared is None:
                shared = time_params.get(f"{parts[0]}.base_layer.{parts[-1]}")
            if (
                shared is not None
                and not param.requires_grad
                and not shared.requires_grad
                and shared.shape == param.shape
                and torch.equal(shared, param)
            ):
                setattr(module, attr, shared)


@dataclass
class ECALFConfig(CALFConfig):
    """Enhanced CALF: CALF with the three enhancements switched on."""

    dynamic_match: bool = True
    multilevel_distillation: bool = True
    adaptive_alignment: bool = True


TINY_OPTIONS: dict[str, Any] = {
    "backbone": {"preset": "tiny-gpt2", "pretrained": False, "num_layers": 2, "num_principal_embeddings": 16},
    "encoder_heads": 4,
    "encoder_ff_dim": 64,
}

register_model(
    "ecalf",
    ECALFConfig,
    "Enhanced CALF: dynamic-attention matching, multi-level distillation + contrastive, adaptive alignment",
    tiny_options=TINY_OPTIONS,
)(CALF)

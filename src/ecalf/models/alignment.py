"""The building blocks Enhanced CALF adds to CALF (docs/enhanced-calf.md has the equations).

1. Dynamic-attention cross-modal matching: ``window_statistics`` + ``DynamicCrossModalMatch``
   (adaptive per-token, per-head temperatures and mixing weights; alignment-degree gate).
2. Multi-level distillation with an adaptive-temperature contrastive loss: ``LevelWeights``,
   ``distillation_distance``, ``ContrastiveLoss``.
3. Adaptive alignment: ``AlignmentScore`` (EMA of cross-branch cosine similarity) and
   ``adaptive_weight``.

Each block reduces exactly to CALF's computation when its switch is off; the dynamic match also
equals CALF's cross-attention at initialisation (zero-initialised output layers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_WINDOW_STATISTICS = 5
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1


def window_statistics(past_values: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-channel statistics of the raw context window: (B, L, C) -> (B, C, 5).

    mean, log standard deviation, lag-1 autocorrelation, trend strength (correlation with time, in
    [-1, 1]) and normalised spectral entropy (in [0, 1]; 0 = one pure frequency, 1 = white noise).
    """
    x = past_values.transpose(1, 2)  # (B, C, L)
    length = x.shape[-1]
    mean = x.mean(-1)
    centred = x - mean.unsqueeze(-1)
    var = centred.square().mean(-1)
    std = torch.sqrt(var + eps)
    if length > 1:
        acf1 = (centred[..., 1:] * centred[..., :-1]).mean(-1) / (var + eps)
    else:
        acf1 = torch.zeros_like(mean)
    t = torch.arange(length, dtype=x.dtype, device=x.device)
    t = t - t.mean()
    t_norm = torch.sqrt(t.square().mean() + eps)
    trend = (centred * t).mean(-1) / (std * t_norm)
    power = torch.fft.rfft(centred, dim=-1).abs().square()[..., 1:]  # (B, C, F) without the mean term
    if power.shape[-1] > 1:
        p = power / (power.sum(-1, keepdim=True) + eps)
        entropy = -(p * torch.log(p + eps)).sum(-1) / math.log(power.shape[-1])
    else:
        entropy = torch.zeros_like(mean)
    stats = torch.stack([mean, torch.log(std), acf1, trend, entropy], dim=-1)  # (B, C, 5)
    return stats.detach()


class DynamicCrossModalMatch(nn.Module):
    """Cross-attention from time tokens onto the principal word embeddings, adapted per token.

    ``attention`` has exactly the parameters of CALF's ``nn.MultiheadAttention``. With the adaptive
    generator, the logits of head h for token (b, c) are divided by a temperature
    ``tau = softplus(g + softplus^-1(1))`` and the head's output is multiplied by ``m = 2 sigmoid(g')``,
    where (g, g') come from an MLP over [window statistics, x_time]; its last layer starts at zero,
    so tau = m = 1 and the module equals CALF's cross-attention at initialisation.
    With the alignment-degree predictor, ``x_text = a * x_att + (1 - a) * x_time`` with
    ``a = a_min + (1 - a_min) sigmoid(MLP([x_time, x_att, x_time * x_att]))`` in (a_min, 1).
    """

    def __init__(
        self,
        hidden_size: int,
        heads: int,
        *,
        adaptive_weights: bool,
        alignment_degree: bool,
        generator_hidden: int = 64,
        degree_init_bias: float = 2.0,
        degree_min: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= degree_min < 1.0:
            raise ValueError(f"degree_min must be in [0, 1), got {degree_min}")
        self.heads = heads
        self.degree_min = degree_min
        self.attention = nn.MultiheadAttention(hidden_size, heads, batch_first=True)
        self.generator: nn.Sequential | None = None
        self.degree: nn.Sequential | None = None
        if adaptive_weights:
            self.stat_norm = nn.LayerNorm(NUM_WINDOW_STATISTICS)
            self.generator = nn.Sequential(
                nn.Linear(hidden_size + NUM_WINDOW_STATISTICS, generator_hidden),
                nn.GELU(),
                nn.Linear(generator_hidden, 2 * heads),
            )
            last = self.generator[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        if alignment_degree:
            self.degree = nn.Sequential(
                nn.Linear(3 * hidden_size, generator_hidden), nn.GELU(), nn.Linear(generator_hidden, 1)
            )
            gate = self.degree[-1]
            assert isinstance(gate, nn.Linear)
            nn.init.constant_(gate.bias, degree_init_bias)

    def forward(
        self, x_time: Tensor, dictionary: Tensor, statistics: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x_time (B, C, D), dictionary (K, D), stats (B, C, 5) -> x_text (B, C, D), degree (B, C)."""
        x_att = self._attend(x_time, dictionary, statistics)
        if self.degree is None:
            return x_att, None
        gate = torch.sigmoid(self.degree(torch.cat([x_time, x_att, x_time * x_att], dim=-1)))  # (B, C, 1)
        a = self.degree_min + (1.0 - self.degree_min) * gate
        return a * x_att + (1 - a) * x_time, a.squeeze(-1)

    def _attend(self, x_time: Tensor, dictionary: Tensor, statistics: Tensor | None) -> Tensor:
        """Multi-head attention with ``self.attention``'s weights; keys/values projected once per call.

        The dictionary does not depend on the window, so its key and value projections (K, D) are
        computed once and broadcast, instead of once per window as with a repeated dictionary.
        """
        att = self.attention
        b, c, d = x_time.shape
        h, dh = self.heads, d // self.heads
        w_q, w_k, w_v = att.in_proj_weight.chunk(3)
        b_q, b_k, b_v = att.in_proj_bias.chunk(3)
        q = F.linear(x_time, w_q, b_q).view(b, c, h, dh).transpose(1, 2)  # (B, h, C, dh)
        k = F.linear(dictionary, w_k, b_k).view(-1, h, dh).transpose(0, 1)  # (h, K, dh)
        v = F.linear(dictionary, w_v, b_v).view(-1, h, dh).transpose(0, 1)  # (h, K, dh)
        logits = torch.einsum("bhcd,hkd->bhck", q, k) / math.sqrt(dh)  # (B, h, C, K)
        mixing = None
        if self.generator is not None:
            if statistics is None:
                raise ValueError("the adaptive weight generator needs the window statistics")
            g = self.generator(torch.cat([self.stat_norm(statistics), x_time], dim=-1))  # (B, C, 2h)
            temperature = F.softplus(g[..., :h] + _SOFTPLUS_ONE).clamp_min(1e-2)  # (B, C, h)
            mixing = 2 * torch.sigmoid(g[..., h:])  # (B, C, h)
            logits = logits / temperature.transpose(1, 2).unsqueeze(-1)
        weights = F.dropout(torch.softmax(logits, dim=-1), att.dropout, self.training)
        heads_out = torch.einsum("bhck,hkd->bhcd", weights, v)  # (B, h, C, dh)
        if mixing is not None:
            heads_out = heads_out * mixing.transpose(1, 2).unsqueeze(-1)
        return att.out_proj(heads_out.transpose(1, 2).reshape(b, c, d))  # (B, C, D)


class LevelWeights(nn.Module):
    """Per-level weights of the hierarchical distillation loss.

    ``fixed``: CALF's decay^(N - k). ``learned``: softmax(logits) * sum_k decay^(N - k) with logits
    initialised at log decay^(N - k), so training starts from CALF's weights and keeps their sum.
    """

    fixed: Tensor

    def __init__(self, num_levels: int, decay: float, learned: bool) -> None:
        super().__init__()
        fixed = torch.tensor([decay ** (num_levels - 1 - k) for k in range(num_levels)])
        self.register_buffer("fixed", fixed)
        self.logits = nn.Parameter(torch.log(fixed.clamp_min(1e-12))) if learned else None

    def forward(self) -> Tensor:
        if self.logits is None:
            return self.fixed
        return torch.softmax(self.logits, dim=0) * self.fixed.sum()


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between time and text features of the same (sample, channel) token.

    Positives: the same token in the other modality; negatives: every other token of the batch.
    The temperature is learned: ``tau = tau_min + (tau_max - tau_min) * sigmoid(raw)``, which is always
    inside [tau_min, tau_max] and keeps a gradient at the bounds (a hard clamp of exp(log_tau) would
    freeze it there). Fewer than two tokens contribute exactly zero. At most ``max_tokens`` tokens
    (a seeded-free random subset) enter one loss, bounding the (N x N) similarity matrix.
    """

    def __init__(
        self, init: float = 0.1, minimum: float = 0.01, maximum: float = 1.0, max_tokens: int = 4096
    ):
        super().__init__()
        if not 0 < minimum < init < maximum:
            raise ValueError(f"need 0 < temperature min < init < max, got {minimum}, {init}, {maximum}")
        self.minimum, self.maximum, self.max_tokens = minimum, maximum, max_tokens
        frac = (init - minimum) / (maximum - minimum)
        self.raw = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))

    @property
    def temperature(self) -> Tensor:
        return self.minimum + (self.maximum - self.minimum) * torch.sigmoid(self.raw)

    def forward(self, time_features: Tensor, text_features: Tensor) -> Tensor:
        # features: (B, C, D) -> tokens (N, D)
        a = time_features.reshape(-1, time_features.shape[-1])
        b = text_features.reshape(-1, text_features.shape[-1])
        n = a.shape[0]
        if n < 2:
            return a.sum() * 0.0 + self.raw * 0.0
        if n > self.max_tokens:
            keep = torch.randperm(n, device=a.device)[: self.max_tokens]
            a, b, n = a[keep], b[keep], self.max_tokens
        logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / self.temperature  # (N, N)
        target = torch.arange(n, device=a.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class AlignmentScore(nn.Module):
    """s in [0, 1]: EMA over training steps of max(0, mean cosine similarity) of the final features.

    Stored as a buffer, so it is saved with the model and survives resuming.
    """

    value: Tensor

    def __init__(self, momentum: float = 0.9, initial: float = 0.5) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("value", torch.tensor(float(initial)))

    @torch.no_grad()
    def update(self, time_features: Tensor, text_features: Tensor) -> Tensor:
        cosine = F.cosine_similarity(time_features.float(), text_features.float(), dim=-1).mean()
        current = cosine.clamp(0.0, 1.0)
        self.value.mul_(self.momentum).add_((1 - self.momentum) * current)
        return self.value


def adaptive_weight(
    base: float, score: Tensor | float, beta: float, minimum: float, maximum: float
) -> Tensor | float:
    """w = base * clamp(1 + beta * (1 - 2 s), minimum, maximum).

    Poor alignment (s -> 0) raises the weight towards base * (1 + beta); good alignment (s -> 1)
    lowers it towards base * (1 - beta), so alignment terms fade once the modalities agree.
    A tensor score gives a tensor weight on its device (no host synchronisation in the training step).
    """
    if isinstance(score, Tensor):
        return base * (1.0 + beta * (1.0 - 2.0 * score.detach())).clamp(minimum, maximum)
    return base * min(max(1.0 + beta * (1.0 - 2.0 * score), minimum), maximum)

"""Principal word embeddings: CALF's fixed (K, D) dictionary, its exact definition and its disk cache.

Definition (calf-reference.md step 3): ``PCA(K).fit_transform(W.T).T`` for the word-embedding matrix
W (V, D): the D embedding dimensions are the samples, the V vocabulary entries the features. So each
vocabulary column is centred over the D dimensions, X = U S Vt (float64; for V > D from the eigenvectors
of the D x D matrix X X^T, the same factors as the SVD at a fraction of its cost), and the result is
``(U[:, :K] * S[:K]).T`` (K, D) — each row a principal component's scores over the D dimensions.

Signs follow scikit-learn >= 1.5 (``svd_flip(u, vt, u_based_decision=False)``): the largest-magnitude
entry of each row of Vt is made positive. The official code let sklearn pick its solver, which for
these shapes is the unseeded randomized SVD (an approximation that changes run to run); this is the
exact quantity it approximates, and it is deterministic.

Large dictionaries are cached as safetensors (never pickle), keyed by a SHA-256 of the embedding
matrix (shape + float32 bytes) and K, written atomically (a cache that cannot be written is a warning).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from ecalf.artifacts import load_tensors, save_cache_tensors
from ecalf.errors import CheckpointError, ConfigError

CACHE_MIN_ENTRIES = 1 << 20
"""Embedding matrices with fewer entries (the tiny test presets) are not cached: PCA takes ms."""
_TENSOR_NAME = "principal_embeddings"


def principal_embeddings(word_embeddings: Tensor, k: int) -> Tensor:
    """PCA(k).fit_transform(W.T).T of the (V, D) word embeddings -> (K, D) float32 (see module doc)."""
    if word_embeddings.ndim != 2:
        raise ValueError(f"word_embeddings must be (V, D), got shape {tuple(word_embeddings.shape)}")
    vocab, hidden = word_embeddings.shape
    if not 1 <= k <= min(vocab, hidden):
        raise ConfigError(
            f"num_principal_embeddings={k} must be in 1..min(hidden size {hidden}, vocabulary {vocab}) "
            f"= {min(vocab, hidden)}"
        )
    x = word_embeddings.detach().to("cpu", torch.float64).T  # (D, V): samples x features
    x = x - x.mean(dim=0, keepdim=True)  # centre each feature (vocabulary entry) over the samples
    if vocab > hidden:
        # The usual case (V >> D): the same factors from the (D, D) Gram matrix, far cheaper than an
        # SVD of the (D, V) matrix: x x^T = U S^2 U^T, and each row of Vt is u^T x / s.
        eigenvalues, eigenvectors = torch.linalg.eigh(x @ x.T)  # ascending
        order = torch.argsort(eigenvalues, descending=True)[:k]
        s = eigenvalues[order].clamp_min(0.0).sqrt()  # (K,)
        u = eigenvectors[:, order]  # (D, K)
        vt = (u.T @ x) / torch.where(s > 0, s, torch.ones_like(s)).unsqueeze(1)  # (K, V)
    else:
        u, s, vt = torch.linalg.svd(x, full_matrices=False)  # (D, r), (r,), (r, V) with r = min(D, V)
        u, s, vt = u[:, :k], s[:k], vt[:k]
    pivots = vt.abs().argmax(dim=1)  # (K,)
    signs = torch.sign(vt[torch.arange(vt.shape[0]), pivots])
    signs[signs == 0] = 1.0
    scores = u * (s * signs)  # (D, K) = fit_transform(W.T)
    return scores.T.contiguous().to(torch.float32)  # (K, D)


def embedding_fingerprint(word_embeddings: Tensor) -> str:
    """SHA-256 of the matrix's shape and float32 bytes: the identity of a backbone's vocabulary."""
    data = word_embeddings.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(f"{tuple(data.shape)}".encode())
    digest.update(data.numpy().data.cast("B"))  # the bytes in place, not a (V, D) copy
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$ECALF_CACHE_DIR``, else ``~/.cache/ecalf``."""
    env = os.environ.get("ECALF_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ecalf"


def cache_path(cache_dir: str | os.PathLike[str], fingerprint: str, k: int) -> Path:
    return Path(cache_dir) / "principal_embeddings" / f"{fingerprint[:32]}-k{k}.safetensors"


def cached_principal_embeddings(
    word_embeddings: Tensor, k: int, cache_dir: str | os.PathLike[str], source: str = ""
) -> Tensor:
    """``principal_embeddings`` read from the cache when present, else computed and written atomically.

    An unreadable or mismatching cache file is recomputed and replaced.
    """
    fingerprint = embedding_fingerprint(word_embeddings)
    path = cache_path(cache_dir, fingerprint, k)
    expected = (k, word_embeddings.shape[1])
    if path.is_file():
        try:
            cached = load_tensors(path).get(_TENSOR_NAME)
        except CheckpointError:
            cached = None
        if cached is not None and tuple(cached.shape) == expected and cached.dtype == torch.float32:
            return cached
    result = principal_embeddings(word_embeddings, k)
    metadata = {
        "definition": "PCA(K).fit_transform(W.T).T, exact float64, sklearn>=1.5 signs",
        "embedding_sha256": fingerprint,
        "vocab_size": str(word_embeddings.shape[0]),
        "hidden_size": str(word_embeddings.shape[1]),
        "k": str(k),
        "source": source,
    }
    save_cache_tensors(
        path, {_TENSOR_NAME: result}, metadata, what="the dictionary cache",
        otherwise="it is computed again next time",
    )  # fmt: skip
    return result

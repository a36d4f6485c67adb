"""The numbers of the paper's table (docs/fsd.md sec. 7 and 9), as pure functions on arrays.

* :func:`frechet_distance` / :func:`fid`: FID between two sets of feature vectors (scipy's ``sqrtm``).
* :func:`cross_fid`: FID between the views of the first and the second half of the seed list.
* :func:`inception_score`: exp(E_x KL(p(y|x) || p(y))) of class probabilities.
* :func:`colour_entropy`, :func:`mean_pairwise_distance`: the shapes world's diversity extras.

Nothing here knows about images, renderers or models: the callers pass features and probabilities.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.linalg
import scipy.spatial.distance


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D,D] (unbiased, ddof=1) of features [N,D] in float64; N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features [N,D] with N >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Frechet distance of two Gaussians.

    ``(S1 S2)^(1/2)`` is scipy's ``sqrtm``; when it is not finite (singular products, common with fewer
    samples than dimensions) ``eps * I`` is added to both covariances, and the imaginary part that
    round-off leaves is dropped.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between feature sets [Na,D] and [Nb,D] (each N >= 2)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


@dataclass
class CrossFID:
    """CROSS-FID of one prompt and method, with what it was computed from.

    Attributes:
        value: FID between the two halves' view features.
        seeds_a, seeds_b: the seeds of the first and the second half.
        n_a, n_b: feature vectors (views) in each half.
        feature_dim: D, the feature size. With n_a - 1 < D the covariances are rank-deficient.
    """

    value: float
    seeds_a: list[int]
    seeds_b: list[int]
    n_a: int
    n_b: int
    feature_dim: int

    @property
    def rank_deficient(self) -> bool:
        return min(self.n_a, self.n_b) - 1 < self.feature_dim


def seed_halves(seeds: Sequence[int]) -> tuple[list[int], list[int]]:
    """The first and second half of the sorted seeds (the first half is the smaller one for an odd count).

    The paper's 4 seeds give ({0, 1}, {2, 3}).
    """
    ordered = sorted(seeds)
    half = len(ordered) // 2
    return ordered[:half], ordered[half:]


def cross_fid(features_by_seed: Mapping[int, np.ndarray]) -> Optional[CrossFID]:
    """FID between the views of the first and the second half of the seeds; None with fewer than 2 seeds.

    Args:
        features_by_seed: seed -> view features [V,D] of that seed's asset (V >= 1; each half needs >= 2 rows).
    """
    if len(features_by_seed) < 2:
        return None
    seeds_a, seeds_b = seed_halves(list(features_by_seed))
    a = np.concatenate([np.asarray(features_by_seed[s], np.float64) for s in seeds_a])
    b = np.concatenate([np.asarray(features_by_seed[s], np.float64) for s in seeds_b])
    if len(a) < 2 or len(b) < 2:
        return None
    return CrossFID(fid(a, b), seeds_a, seeds_b, len(a), len(b), int(a.shape[1]))


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities [N,K] (rows sum to 1); p(y) is their mean.

    1 when every image gets the same distribution; K when N images are confidently spread over K classes
    in equal shares.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"need class probabilities [N,K], got shape {p.shape}")
    p_y = p.mean(axis=0, keepdims=True)
    kl = (p * (np.log(p + eps) - np.log(p_y + eps))).sum(axis=1)
    return float(np.exp(kl.mean()))


def majority(labels: Sequence[str]) -> str:
    """The most common label (ties: the one seen first)."""
    return Counter(labels).most_common(1)[0][0]


def colour_entropy(colours: Sequence[str], n_colours: int) -> float:
    """Entropy of the colour histogram of ``colours`` (one per seed) divided by log(n_colours), in [0,1]."""
    if not colours or n_colours < 2:
        return 0.0
    counts = np.array(list(Counter(colours).values()), dtype=np.float64)
    p = counts / counts.sum()
    return max(0.0, float(-(p * np.log(p)).sum() / math.log(n_colours)))


def mean_pairwise_distance(points: np.ndarray) -> Optional[float]:
    """Mean Euclidean distance over all pairs of rows of [S,D] (the seeds' mean features); None for S < 2."""
    x = np.asarray(points, dtype=np.float64)
    if x.shape[0] < 2:
        return None
    return float(scipy.spatial.distance.pdist(x).mean())


def mean_std(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    """(mean, std with ddof 0, count) over the values that are not None; (None, None, 0) if there are none."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None, None, 0
    return float(np.mean(kept)), float(np.std(kept)), len(kept)

"""Fréchet distance between two sets of feature vectors (FID, FVD)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (N-1 normalisation) of features [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D], got shape {list(features.shape)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), real part (as StyleGAN-V's FVD code)."""
    mu1, sigma1 = feature_stats(features1)
    mu2, sigma2 = feature_stats(features2)
    with warnings.catch_warnings():  # singular products (few samples) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if isinstance(root, tuple):  # older SciPy returns (root, error) for disp=False
        root = root[0]
    mean_term = float(np.square(mu1 - mu2).sum())
    return float(np.real(mean_term + np.trace(sigma1 + sigma2 - 2 * root)))

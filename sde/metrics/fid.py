"""FID, KID and Inception Score from Inception features, and cached dataset reference statistics.

Protocol (Song et al. 2021, Karras et al. 2022): 50,000 samples against the 50,000 CIFAR-10
training images, Inception pool-3 features of the FID network (`sde.metrics.inception`), images
quantized to 8 bits first. `python -m sde.evaluate` draws sample `i` from per-sample seed
`seed * 1_000_000 + i` (see `sde.sample.sample_seeds`), so `seed=0 eval.n=50000` uses the seeds
0..49999, as EDM's `--seeds=0-49999`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch


# --- Frechet distance --------------------------------------------------------------------------
def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(torch.as_tensor(features).double().cpu())
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features shaped (N >= 2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_eigvals_sum(m: np.ndarray) -> float:
    """sum_i sqrt(lambda_i) of a symmetric PSD matrix; eigenvalues below its numerical-rank cutoff
    (n eps lambda_max, as `np.linalg.matrix_rank`) count as 0: their square roots would only be
    amplified roundoff (sqrt(1e-16) = 1e-8 each, times up to 2048 of them)."""
    lam = np.linalg.eigvalsh(m)
    cutoff = max(lam.max(initial=0.0), 0.0) * len(lam) * np.finfo(lam.dtype).eps
    return float(np.sqrt(lam[lam > cutoff]).sum())


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (S1 S2)^{1/2} for symmetric PSD S1, S2, in float64: S1 S2 is similar to the symmetric
    A S2 A with A = S1^{1/2}, so the trace is sum_i sqrt(lambda_i(A S2 A)). Two symmetric
    eigendecompositions: exact like scipy's sqrtm (pytorch-fid), also for singular covariances
    (no imaginary parts, no eps offset), and seconds instead of a minute at D = 2048."""
    w, v = np.linalg.eigh(sigma1)
    w[w <= max(w.max(initial=0.0), 0.0) * len(w) * np.finfo(w.dtype).eps] = 0.0  # rank cutoff
    a = (v * np.sqrt(w)) @ v.T  # S1^{1/2}
    return _sqrt_eigvals_sum(a @ sigma2 @ a)


def trace_sqrt_product_features(features1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (S1 S2)^{1/2} with S1 the unbiased covariance of features1 (N, D): S1 = Y^T Y with
    Y = (F - mean) / sqrt(N - 1), and S1 S2 = Y^T (Y S2) has the nonzero eigenvalues of the
    (N, N) matrix Y S2 Y^T, so N < D samples cost one (N, N) eigendecomposition, not (D, D)."""
    f = np.asarray(features1, dtype=np.float64)
    y = (f - f.mean(axis=0)) / np.sqrt(len(f) - 1)  # (N, D)
    return _sqrt_eigvals_sum(y @ sigma2 @ y.T)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) between two Gaussians
    (Eq. 6 of Heusel et al. 2017), in float64 (see `trace_sqrt_product`)."""
    mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
    s1, s2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2  # symmetric up to rounding
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def fid_from_features(features1, features2) -> float:
    """FID between two feature sets (N, D) and (M, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def fid_to_reference(features, mu2, sigma2) -> float:
    """FID of features (N, D) against reference statistics (mu2, sigma2); for N <= D through
    `trace_sqrt_product_features` (exact, and fast for few samples), else `frechet_distance`."""
    mu1, sigma1 = feature_statistics(features)
    f = np.asarray(torch.as_tensor(features).double().cpu())
    mu2, sigma2 = np.float64(mu2), np.float64(sigma2)
    if len(f) > f.shape[1]:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    if mu2.shape != mu1.shape or sigma2.shape != sigma1.shape:
        raise ValueError(f"reference statistics {mu2.shape}, {sigma2.shape} do not match "
                         f"features {f.shape}")
    sigma2 = (sigma2 + sigma2.T) / 2
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * trace_sqrt_product_features(f, sigma2))


# --- KID ---------------------------------------------------------------------------------------
def polynomial_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                    coef0: float = 1.0) -> float:
    """Unbiased squared MMD with the kernel k(a, b) = (gamma a.b + coef0)^degree, gamma = 1/D
    by default (Binkowski et al. 2018, Eq. 3); x and y have the same size m."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"need two sets of the same size >= 2, got {x.shape[0]} and {y.shape[0]}")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k = lambda a, b: (a @ b.T * gamma + coef0) ** degree
    k_xx, k_yy, k_xy = k(x, x), k(y, y), k(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.mean())


def kernel_inception_distance(features1, features2, *, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and std over `subsets` random subsets (without replacement) of size
    `subset_size` of the unbiased polynomial-kernel MMD^2 (Binkowski et al. 2018; the defaults of
    torch-fidelity). The subset size is clipped to the smaller set."""
    f1 = np.asarray(torch.as_tensor(features1).double().cpu())
    f2 = np.asarray(torch.as_tensor(features2).double().cpu())
    size = min(subset_size, len(f1), len(f2))
    rng = np.random.RandomState(seed)
    mmds = [polynomial_mmd2(f1[rng.choice(len(f1), size, replace=False)],
                            f2[rng.choice(len(f2), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(mmds)), float(np.std(mmds))


# --- Inception Score ---------------------------------------------------------------------------
def inception_score(logits, *, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split of the logits (N, C), mean and std over the
    splits (Salimans et al. 2016); no shuffling: pass the samples in seed order."""
    lg = torch.as_tensor(logits).double().cpu()
    n = lg.shape[0]
    if n < splits:
        raise ValueError(f"inception_score needs at least splits={splits} samples, got {n}")
    log_p = lg.log_softmax(dim=1)  # (N, C)
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits:(i + 1) * n // splits]
        log_q = chunk.exp().mean(0, keepdim=True).log()  # log p(y) over the split
        kl = (chunk.exp() * (chunk - log_q)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


# --- feature extraction ------------------------------------------------------------------------
def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W), uint8 or float in [0, 1], C in {1, 3} -> float (B, 3, H, W) in [0, 1],
    quantized to 8 bits as a saved PNG would be; grey images are repeated to RGB."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"FID needs images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float() / 255
    else:
        x = (images.float().clamp(0, 1) * 255).round() / 255
    return x.expand(-1, 3, -1, -1)


@torch.no_grad()
def extract_features(net, batches: Iterable[torch.Tensor], *, device=None,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the FID Inception over batches of images -> (features (N, 2048), logits (N, 1008))."""
    from tqdm import tqdm

    feats, logits = [], []
    for images in tqdm(batches, desc="inception", disable=not progress):
        f, lg = net(to_inception_input(images).to(device or "cpu"))
        feats.append(f.double().cpu())
        logits.append(lg.double().cpu())
    if not feats:
        raise ValueError("no images given to extract_features")
    return torch.cat(feats), torch.cat(logits)


def batched(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split a tensor (N, ...) into batches along the first dimension."""
    return list(torch.split(x, batch_size))


# --- cached reference statistics ---------------------------------------------------------------
def images_hash(batches: Iterable[torch.Tensor], extra: str = "") -> str:
    """sha256 of the 8-bit images (and `extra`, e.g. the weights' name): the cache key."""
    h = hashlib.sha256(extra.encode())
    for images in batches:
        q = (to_inception_input(images) * 255).round().to(torch.uint8)
        h.update(q.contiguous().numpy().tobytes())
    return h.hexdigest()


KID_REFERENCE_FEATURES = 10_000


def _preprocessing_key(net) -> str:
    """Part of the cache key: statistics of one Inception preprocessing never serve another
    (empty for the default, so caches written before the option existed stay valid)."""
    mode = getattr(net, "preprocessing", "pytorch_fid")
    return "" if mode == "pytorch_fid" else f":preprocessing={mode}"


def reference_statistics(batches_fn, cache: str | Path, *, net, key: str = "", device=None,
                         progress: bool = False) -> dict[str, np.ndarray]:
    """Inception statistics of a dataset, computed once and cached in the npz `cache`:
    mu (2048,), sigma (2048, 2048) over all images, `features` of at most 10,000 evenly spaced
    images (for KID), and `hash`, the sha256 of the 8-bit images, `key` (name the weights) and
    the net's `preprocessing` where not the default. `batches_fn()` yields the image batches
    anew. The cache is reused only when the stored hash matches (hashing is cheap next to the
    Inception pass); a changed dataset recomputes it.
    """
    cache = Path(cache)
    digest = images_hash(batches_fn(), extra=key + _preprocessing_key(net))
    if cache.is_file():
        stored = np.load(cache)
        if str(stored["hash"]) == digest:
            return {k: stored[k] for k in ("mu", "sigma", "features")}
    features, _ = extract_features(net, batches_fn(), device=device, progress=progress)
    mu, sigma = feature_statistics(features)
    keep = np.linspace(0, len(features) - 1, min(len(features), KID_REFERENCE_FEATURES))
    stats = {"mu": mu, "sigma": sigma,
             "features": features[np.round(keep).astype(int)].float().numpy()}
    from sde.runs.files import atomic_write

    atomic_write(cache, lambda f: np.savez(f, hash=np.array(digest), **stats))
    return stats


def image_metrics(sample_features, sample_logits, reference: dict, *, metrics: Iterable[str],
                  kid_subsets: int = 100, kid_subset_size: int = 1000,
                  is_splits: int = 10) -> dict[str, float]:
    """The requested metrics among fid, kid, is from sample features/logits and reference stats."""
    out: dict[str, float] = {}
    metrics = set(metrics)
    if "fid" in metrics:
        out["fid"] = fid_to_reference(sample_features, reference["mu"], reference["sigma"])
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kernel_inception_distance(
            sample_features, reference["features"], subsets=kid_subsets,
            subset_size=kid_subset_size)
    if "is" in metrics:
        out["is"], out["is_std"] = inception_score(sample_logits,
                                                   splits=min(is_splits, len(sample_logits)))
    return out

"""A small CNN classifier of the 8x8 digits, to measure samples (class accuracy, a Frechet-style
feature distance), as FID's Inception network measures CIFAR-10 samples.

Trained on the real digits' training split (`sde.data.sources.digits`) in a few CPU seconds,
deterministically from `seed` (weights, order and augmentation all drawn from seeded generators),
once per process (`digits_classifier` is cached). It takes images in model space: (B, 1, 8, 8) in
[-1, 1] (`data=digits`, `centered: true`); pass `centered=False` for [0, 1] images.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from sde.metrics.fid import feature_statistics, frechet_distance

NUM_CLASSES = 10
LEVELS = 17  # the digits' grey levels 0..16


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks (8x8 -> 4x4), a 64-wide penultimate layer, 10 logits."""

    def __init__(self, width: int = 16, features: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),  # (B, w, 4, 4)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),  # (B, 2w, 2, 2)
            nn.Flatten(), nn.Linear(8 * width, features), nn.SiLU())
        self.head = nn.Linear(features, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, features) of images in [-1, 1], (B, 1, 8, 8)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 10) logits


def _to_unit(raw: torch.Tensor) -> torch.Tensor:
    """Digits' levels 0..16 -> [-1, 1] (the model space of `data=digits`)."""
    return 2.0 * raw.float() / (LEVELS - 1) - 1.0


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augmentation: each image shifted by -1, 0 or 1 pixel in each direction (zero padded)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)  # (B, 1, 10, 10), background -1
    dy, dx = torch.randint(0, 3, (2, len(x)), generator=generator)
    rows = (dy[:, None] + torch.arange(8))[:, None, :, None].expand(-1, 1, 8, 10)
    x = padded.gather(2, rows)  # (B, 1, 8, 10)
    cols = (dx[:, None] + torch.arange(8))[:, None, None, :].expand(-1, 1, 8, 8)
    return x.gather(3, cols)  # (B, 1, 8, 8)


def train_digits_classifier(*, seed: int = 0, epochs: int = 25, batch_size: int = 128,
                            lr: float = 1e-2) -> DigitsCNN:
    """The classifier trained with Adam on the 1500 training digits (shift augmentation)."""
    from sde.data import sources

    x, y = _to_unit(sources.digits(train=True)), sources.digits_labels(train=True)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(seed)
        net = DigitsCNN()
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * -(-len(x) //
                                                                                batch_size))
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=generator).split(batch_size):
                loss = nn.functional.cross_entropy(net(_shift(x[idx], generator)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def digits_classifier(seed: int = 0) -> DigitsCNN:
    """The trained classifier for `seed`, built once per process (eval mode, frozen, CPU)."""
    with torch.inference_mode(False):
        return train_digits_classifier(seed=seed)


def _prepare(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """Model-space images -> the classifier's input, (B, 1, 8, 8) in [-1, 1] on the CPU."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"the digits classifier takes images shaped (B, 1, 8, 8), got "
                         f"{tuple(x.shape)}; reshape the samples (data=digits models)")
    x = x.detach().float().cpu()
    return x if centered else 2.0 * x - 1.0


@torch.no_grad()
def logits(x: torch.Tensor, *, centered: bool = True, seed: int = 0) -> torch.Tensor:
    """Class logits (B, 10) of images `x` (B, 1, 8, 8)."""
    return digits_classifier(seed)(_prepare(x, centered))


def classify(x: torch.Tensor, *, centered: bool = True, seed: int = 0) -> torch.Tensor:
    """The predicted class (B,) int64 of images `x` (B, 1, 8, 8)."""
    return logits(x, centered=centered, seed=seed).argmax(1)


@torch.no_grad()
def features(x: torch.Tensor, *, centered: bool = True, seed: int = 0) -> torch.Tensor:
    """Penultimate features (B, 64) of images `x` (B, 1, 8, 8)."""
    return digits_classifier(seed).features(_prepare(x, centered))


def accuracy(x: torch.Tensor, labels: torch.Tensor, **kwargs) -> float:
    """Fraction of images `x` classified as their `labels` (B,)."""
    return (classify(x, **kwargs) == labels.cpu()).float().mean().item()


def feature_distance(x: torch.Tensor, reference: torch.Tensor, **kwargs) -> float:
    """Frechet distance between Gaussians fitted to the classifier features of `x` and of
    `reference` (Heusel et al. 2017, Eq. 6, in this classifier's feature space)."""
    mu1, sigma1 = feature_statistics(features(x, **kwargs).double().numpy())
    mu2, sigma2 = feature_statistics(features(reference, **kwargs).double().numpy())
    return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def real_digits(*, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The real digits in [-1, 1] (N, 1, 8, 8) and their labels (N,) (test split by default)."""
    from sde.data import sources

    return _to_unit(sources.digits(train=train)), sources.digits_labels(train=train)


__all__ = ["DigitsCNN", "accuracy", "classify", "digits_classifier", "feature_distance",
           "features", "logits", "real_digits", "train_digits_classifier"]

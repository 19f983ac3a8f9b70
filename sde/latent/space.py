"""Latent space of a frozen autoencoder for a score model (Rombach et al. 2022, Sec. 4.3.2).

LDM rescales the latents so that they have unit variance before diffusion: z' = s (z - shift)
with s = 1 / std(z) over the first training batch (`scale_factor`, stored in the state dict
so that a resumed or sampling run reuses it), or a released value (0.18215 for SD).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def latent_scale_factor(z: torch.Tensor) -> float:
    """LDM's scale factor: 1 / (standard deviation of every entry of `z`)."""
    std = z.detach().flatten().std().item()
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"cannot take a scale factor from latents with std {std}: the batch is "
                         "constant or not finite (use a batch of varied training images)")
    return 1.0 / std


class LatentSpace(nn.Module):
    """A frozen `AutoencoderKL` mapping images <-> scaled latents: `encode(x)`, `decode(z)`.

    `scale_factor=None` takes the autoencoder's own (`scaling_factor`, from released weights)
    or else waits for `fit_scale_factor(first_batch)`; once set it is a buffer, saved and
    restored with the state dict and never refitted. Encoding uses a posterior sample as LDM
    (`sample_posterior=True`, noise from `generator=`) or its mean.
    """

    def __init__(self, autoencoder: nn.Module, *, scale_factor: float | None = None,
                 shift_factor: float | None = None, sample_posterior: bool = True):
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        if scale_factor is None:
            scale_factor = getattr(autoencoder, "scaling_factor", None)
        if shift_factor is None:
            shift_factor = getattr(autoencoder, "shift_factor", None) or 0.0
        nan = float("nan") if scale_factor is None else float(scale_factor)
        self.register_buffer("scale_factor", torch.tensor(nan))
        self.register_buffer("shift_factor", torch.tensor(float(shift_factor)))
        self.sample_posterior = sample_posterior

    def train(self, mode: bool = True):
        """The autoencoder stays in eval mode (frozen) whatever the mode of the rest."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    @property
    def is_fitted(self) -> bool:
        return bool(torch.isfinite(self.scale_factor))

    def latent_shape(self, image_shape) -> tuple[int, ...]:
        """The shape of the latents of images shaped `image_shape` (B, C, H, W)."""
        return self.autoencoder.latent_shape(image_shape)

    @torch.no_grad()
    def _raw_latents(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        posterior = self.autoencoder.encode(x)
        return posterior.sample(generator) if self.sample_posterior else posterior.mode()

    def fit_scale_factor(self, x: torch.Tensor, generator=None) -> float:
        """Set the scale factor from a first batch of images `x`, unless already set; return it."""
        if not self.is_fitted:
            z = self._raw_latents(x, generator) - self.shift_factor
            self.scale_factor.fill_(latent_scale_factor(z))
        return float(self.scale_factor)

    def encode(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Scaled latents s (z - shift) of images `x` (B, C, H, W): (B, embed_dim, H/f, W/f)."""
        if not self.is_fitted:
            raise RuntimeError("the latent scale factor is not set: call "
                               "fit_scale_factor(first_batch) or pass scale_factor=")
        return (self._raw_latents(x, generator) - self.shift_factor) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from scaled latents `z`: decoder(z / s + shift)."""
        if not self.is_fitted:
            raise RuntimeError("the latent scale factor is not set: load the run's state dict "
                               "or pass scale_factor=")
        return self.autoencoder.decode(z / self.scale_factor + self.shift_factor)

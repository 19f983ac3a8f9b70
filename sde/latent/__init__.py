"""Latent diffusion: the autoencoder's losses and the frozen latent space a score SDE runs in."""

from sde.latent.losses import (
    AutoencoderLoss,
    adaptive_weight,
    adopt_weight,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    l1_loss,
)
from sde.latent.lpips import LPIPS, load_lpips
from sde.latent.space import LatentSpace, latent_scale_factor

__all__ = ["AutoencoderLoss", "LPIPS", "LatentSpace", "adaptive_weight", "adopt_weight",
           "hinge_d_loss", "hinge_g_loss", "kl_loss", "l1_loss", "latent_scale_factor",
           "load_lpips"]

"""The autoencoder's training losses (Rombach et al. 2022, App. G; Esser et al. 2021).

LDM's `LPIPSWithDiscriminator`, without a download: the reconstruction term is L1 (plus LPIPS
when a local weights file is given, `sde.latent.lpips`), weighted by a learned log-variance;
the KL to N(0, I) has a small weight (1e-6 in LDM); the PatchGAN hinge loss enters only from
`disc_start` on, with LDM's adaptive weight ||grad rec|| / ||grad adv|| at the last layer.

Sums over pixels and latent dims are divided by the batch size, as in LDM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_loss(posterior) -> torch.Tensor:
    """KL(q(z | x) || N(0, I)) summed over latent dims, averaged over the batch."""
    return posterior.kl().mean()


def l1_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """|x - x_rec| per pixel: (B, C, H, W)."""
    return (x - x_rec).abs()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: (E relu(1 - D(x)) + E relu(1 + D(x_rec))) / 2 (taming)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial loss: -E D(x_rec)."""
    return -logits_fake.mean()


def adopt_weight(weight: float, step: int, start: int) -> float:
    """`weight` from step `start` on, 0 before (taming's adopt_weight)."""
    return weight if step >= start else 0.0


def adaptive_weight(rec_loss, g_loss, last_layer, *, disc_weight: float = 1.0) -> torch.Tensor:
    """LDM's d_weight: ||grad rec|| / (||grad g|| + 1e-4) at `last_layer`, clamped to [0, 1e4]."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


class AutoencoderLoss(nn.Module):
    """L1 (+ LPIPS) reconstruction, KL and PatchGAN hinge losses of LDM's KL autoencoder.

    `generator_loss` is the autoencoder's objective, `discriminator_loss` the discriminator's;
    both return `(loss, logs)`. Before `disc_start` the discriminator is never called and both
    adversarial terms are exactly 0. `discriminator=None` trains without the adversarial term.
    """

    def __init__(self, *, discriminator: nn.Module | None = None, kl_weight: float = 1e-6,
                 disc_start: int = 50_001, disc_weight: float = 0.5, disc_factor: float = 1.0,
                 logvar_init: float = 0.0, perceptual: nn.Module | None = None,
                 perceptual_weight: float = 1.0):
        super().__init__()
        if kl_weight < 0 or disc_weight < 0 or disc_factor < 0 or disc_start < 0:
            raise ValueError("kl_weight, disc_weight, disc_factor and disc_start must be >= 0")
        self.discriminator, self.perceptual = discriminator, perceptual
        self.kl_weight, self.disc_start = kl_weight, disc_start
        self.disc_weight, self.disc_factor = disc_weight, disc_factor
        self.perceptual_weight = perceptual_weight
        self.logvar = nn.Parameter(torch.tensor(float(logvar_init)))

    def adversarial(self, step: int) -> float:
        """The adversarial factor at `step`: disc_factor from disc_start on, else 0."""
        if self.discriminator is None:
            return 0.0
        return adopt_weight(self.disc_factor, step, self.disc_start)

    def reconstruction(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        """Per-pixel L1, plus perceptual_weight * LPIPS per image when given: (B, C, H, W)."""
        rec = l1_loss(x, x_rec)
        if self.perceptual is not None and self.perceptual_weight > 0:
            lpips = self.perceptual(x, x_rec)  # (B,)
            rec = rec + self.perceptual_weight * lpips.reshape(-1, 1, 1, 1)
        return rec

    def generator_loss(self, x, x_rec, posterior, step: int, *, last_layer=None):
        """The autoencoder's loss nll + kl_weight KL + d_weight factor(step) (-E D(x_rec))."""
        rec = self.reconstruction(x, x_rec)
        nll = (rec / torch.exp(self.logvar) + self.logvar).flatten(1).sum(1).mean()
        kl = kl_loss(posterior)
        loss = nll + self.kl_weight * kl
        logs = {"rec": rec.mean().detach(), "nll": nll.detach(), "kl": kl.detach()}
        factor = self.adversarial(step)
        if factor > 0:
            g_loss = hinge_g_loss(self.discriminator(x_rec))
            d_weight = (adaptive_weight(nll, g_loss, last_layer, disc_weight=self.disc_weight)
                        if last_layer is not None and torch.is_grad_enabled()
                        else torch.tensor(self.disc_weight))
            loss = loss + d_weight * factor * g_loss
            logs.update(g_loss=g_loss.detach(), d_weight=d_weight)
        return loss, logs

    def discriminator_loss(self, x, x_rec, step: int):
        """The discriminator's hinge loss on x (real) and detached x_rec (fake); 0 before start."""
        factor = self.adversarial(step)
        if factor == 0:
            return torch.zeros((), device=x.device), {"d_loss": torch.zeros(())}
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(x_rec.detach())
        d_loss = factor * hinge_d_loss(logits_real, logits_fake)
        return d_loss, {"d_loss": d_loss.detach(), "logits_real": logits_real.mean().detach(),
                        "logits_fake": logits_fake.mean().detach()}

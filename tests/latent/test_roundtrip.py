"""A tiny autoencoder trained briefly on digits reconstructs held-out digits (slow: ~40 s)."""

import pytest
import torch

from sde.data.sources import digits
from sde.latent import AutoencoderLoss
from sde.latent.steps import ae_parameters, autoencoder_step
from sde.models.autoencoder import AutoencoderKL, psnr


def _pca_psnr(train: torch.Tensor, test: torch.Tensor, q: int) -> float:
    """PSNR of the best linear code with q components (PCA of the training digits)."""
    mean = train.flatten(1).mean(0)
    _, _, vh = torch.linalg.svd(train.flatten(1) - mean, full_matrices=False)
    basis = vh[:q].T  # (64, q)
    rec = (test.flatten(1) - mean) @ basis @ basis.T + mean
    return psnr(test, rec.reshape(test.shape)).mean().item()


@pytest.mark.slow
def test_trained_autoencoder_round_trip_on_held_out_digits():
    """f = 2, z_channels = 2: a 32-number code of a 64-pixel digit. After 300 Adam steps it must
    beat the optimal 16-component linear code (PCA, ~19.8 dB) and reach 21 dB (measured 23.7 dB;
    the mean image scores 11.4 dB), on digits it never saw."""
    train = digits(train=True).float() / 16 * 2 - 1  # (1500, 1, 8, 8) in [-1, 1]
    test = digits(train=False).float() / 16 * 2 - 1
    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=1, ch=16, ch_mult=(1, 2), num_res_blocks=1, z_channels=2,
                       num_groups=8)
    loss_fn = AutoencoderLoss(kl_weight=1e-6)
    opt = torch.optim.Adam(ae_parameters(ae, loss_fn), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(300):
        batch = train[torch.randint(len(train), (64,), generator=g)]
        autoencoder_step(ae, loss_fn, batch, step, opt_ae=opt, generator=g)
    with torch.no_grad():
        rec = ae.decode(ae.encode(test).mode()).clamp(-1, 1)
    score = psnr(test, rec).mean().item()
    assert score > _pca_psnr(train, test, 16)
    assert score > 21.0

"""LDM's KL autoencoder: shapes, the posterior and its KL, the patch discriminator."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from sde.models.autoencoder import AutoencoderKL, DiagonalGaussian, PatchDiscriminator, psnr


def tiny(ch_mult, **kw):
    return AutoencoderKL(**{"ch": 8, "ch_mult": ch_mult, "num_res_blocks": 1, "z_channels": 3,
                            "num_groups": 4, **kw})


@pytest.mark.parametrize("ch_mult, f", [((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_encoder_and_decoder_shapes(ch_mult, f):
    ae = tiny(ch_mult)
    x = torch.randn(2, 3, 16, 24)
    posterior = ae.encode(x)
    assert ae.downsample_factor == f
    assert posterior.mean.shape == posterior.std.shape == (2, 3, 16 // f, 24 // f)
    assert ae.latent_shape(x.shape) == (2, 3, 16 // f, 24 // f)
    assert ae.decode(posterior.sample()).shape == x.shape
    x_rec, _ = ae(x)
    assert x_rec.shape == x.shape


def test_embed_dim_and_channels():
    ae = tiny((1, 2), in_channels=1, embed_dim=2)
    x = torch.randn(1, 1, 8, 8)
    assert ae.encode(x).mean.shape == (1, 2, 4, 4)
    assert ae.decode(torch.randn(1, 2, 4, 4)).shape == x.shape


def test_bad_image_shapes_name_the_problem():
    ae = tiny((1, 2, 2))
    with pytest.raises(ValueError, match="divisible by f=4"):
        ae.encode(torch.randn(1, 3, 10, 12))
    with pytest.raises(ValueError, match="3 channels"):
        ae.encode(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="num_groups=32 must divide"):
        AutoencoderKL(ch=8, ch_mult=(1,), num_groups=32)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(4, 6, 3, 5, generator=g) * 2  # (B, 2 z, h, w)
    posterior = DiagonalGaussian(moments)
    mean, logvar = moments.chunk(2, dim=1)
    expected = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)),
                             Normal(torch.zeros_like(mean), torch.ones_like(mean)))
    torch.testing.assert_close(posterior.kl(), expected.flatten(1).sum(1))


def test_logvar_is_clamped_as_ldm():
    moments = torch.cat([torch.zeros(1, 2, 1, 1), torch.tensor([-100.0, 100.0]).reshape(1, 2, 1, 1)],
                        dim=1)
    posterior = DiagonalGaussian(moments)
    assert posterior.logvar.flatten().tolist() == [-30.0, 20.0]
    assert posterior.std.flatten()[1].item() == pytest.approx(math.exp(10.0))


def test_posterior_sample_is_seeded_and_has_the_posterior_moments():
    moments = torch.cat([torch.full((1, 1, 64, 64), 1.5), torch.full((1, 1, 64, 64), math.log(0.25))],
                        dim=1)
    posterior = DiagonalGaussian(moments)
    a = posterior.sample(torch.Generator().manual_seed(3))
    b = posterior.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.mean().item() == pytest.approx(1.5, abs=0.03)  # 4096 draws: se 0.5 / 64
    assert a.std().item() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("n_layers, side, out", [(1, 8, 2), (2, 16, 2), (3, 32, 2)])
def test_patch_discriminator_shapes(n_layers, side, out):
    d = PatchDiscriminator(in_channels=1, ndf=8, n_layers=n_layers)
    assert d(torch.randn(2, 1, side, side)).shape == (2, 1, out, out)


def test_patch_discriminator_too_small_image_is_a_clear_error():
    with pytest.raises(ValueError, match="too small for n_layers=3"):
        PatchDiscriminator(in_channels=1, ndf=8, n_layers=3)(torch.randn(2, 1, 16, 16))


def test_psnr_closed_form():
    x = torch.zeros(2, 1, 4, 4)
    y = x + torch.tensor([0.1, 0.2]).reshape(2, 1, 1, 1)
    expected = torch.tensor([10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)])
    torch.testing.assert_close(psnr(x, y), expected)

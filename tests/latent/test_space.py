"""The frozen latent space: LDM's scale factor is computed on the first batch, stored, reused."""

import numpy as np
import pytest
import torch

from sde.latent import LatentSpace, latent_scale_factor
from sde.models.autoencoder import AutoencoderKL


def _space(**kw):
    torch.manual_seed(0)
    ae = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=2, num_groups=4,
                       in_channels=1)
    return LatentSpace(ae, sample_posterior=False, **kw)


def _images(seed):
    return torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_scale_factor_is_one_over_the_std_of_the_first_batch():
    space = _space()
    x = _images(0)
    z = space.autoencoder.encode(x).mean.detach().numpy()
    expected = 1.0 / np.std(z, ddof=1)  # torch.std is unbiased, as LDM's z.flatten().std()
    assert space.fit_scale_factor(x) == pytest.approx(expected, rel=1e-5)
    assert latent_scale_factor(torch.from_numpy(z)) == pytest.approx(expected, rel=1e-5)
    assert space.encode(x).std().item() == pytest.approx(1.0, rel=1e-5)


def test_scale_factor_is_reused_not_refitted():
    space = _space()
    first = space.fit_scale_factor(_images(0))
    assert space.fit_scale_factor(_images(1) * 3) == first
    restored = _space()
    restored.load_state_dict(space.state_dict())  # what a run stores and a sampling run reloads
    assert restored.is_fitted and float(restored.scale_factor) == first
    x = _images(2)
    torch.testing.assert_close(restored.encode(x), space.encode(x))


def test_encode_decode_use_the_scale_and_shift():
    space = _space(scale_factor=0.5, shift_factor=0.25)
    x = _images(3)
    raw = space.autoencoder.encode(x).mean
    z = space.encode(x)
    torch.testing.assert_close(z, (raw - 0.25) * 0.5)
    torch.testing.assert_close(space.decode(z), space.autoencoder.decode(raw))


def test_released_scaling_factor_is_taken_from_the_autoencoder():
    ae = AutoencoderKL(ch=4, ch_mult=(1,), num_res_blocks=1, z_channels=2, num_groups=2,
                       scaling_factor=0.18215)
    assert float(LatentSpace(ae).scale_factor) == pytest.approx(0.18215)


def test_unfitted_space_and_constant_batch_are_clear_errors():
    space = _space()
    with pytest.raises(RuntimeError, match="fit_scale_factor"):
        space.encode(_images(0))
    with pytest.raises(ValueError, match="constant"):
        latent_scale_factor(torch.ones(4, 2, 2, 2))


def test_autoencoder_stays_frozen():
    space = _space(scale_factor=1.0).train()
    assert not space.autoencoder.training
    assert not any(p.requires_grad for p in space.parameters())


def test_posterior_samples_are_seeded():
    space = LatentSpace(_space().autoencoder, scale_factor=1.0, sample_posterior=True)
    x = _images(4)
    a = space.encode(x, generator=torch.Generator().manual_seed(5))
    b = space.encode(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, space.autoencoder.encode(x).mean)


def test_a_score_sde_samples_in_latent_space_and_decodes():
    """Latents N(0, I) stay N(0, I) under the VPSDE, so score(z, t) = -z exactly: pc_sample on
    the latent shape must return unit-variance latents, which decode to images."""
    from sde import VPSDE
    from sde.sampling import pc_sample

    space = _space(scale_factor=1.0)
    shape = space.latent_shape((64, 1, 8, 8))
    assert shape == (64, 2, 4, 4)
    z, _ = pc_sample(VPSDE(N=200), lambda z, t: -z, shape, corrector="none",
                     generator=torch.Generator().manual_seed(0))
    assert z.shape == shape
    assert z.mean().item() == pytest.approx(0.0, abs=0.06)  # 2048 draws: se 0.022
    assert z.std().item() == pytest.approx(1.0, abs=0.06)
    with torch.no_grad():
        assert space.decode(z).shape == (64, 1, 8, 8)

"""Cached latents: written atomically with their scale factor, refused with another one."""

import pytest
import torch

from sde.latent import LatentSpace
from sde.latent.cache import encode_dataset, load_latents, save_latents
from sde.models.autoencoder import AutoencoderKL


def _space(scale):
    torch.manual_seed(0)
    ae = AutoencoderKL(ch=4, ch_mult=(1, 2), num_res_blocks=1, z_channels=2, num_groups=2,
                       in_channels=1)
    return LatentSpace(ae, scale_factor=scale, sample_posterior=False)


def test_cache_round_trip_equals_encoding_on_the_fly(tmp_path):
    space = _space(0.7)
    images = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode_dataset(space, images, batch_size=4)
    torch.testing.assert_close(latents, space.encode(images))
    path = save_latents(tmp_path / "cache" / "latents.safetensors", latents, space)
    assert sorted(p.name for p in path.parent.iterdir()) == ["latents.safetensors"]
    torch.testing.assert_close(load_latents(path, space), latents)


def test_cache_of_another_scale_factor_is_refused(tmp_path):
    path = save_latents(tmp_path / "z.safetensors", torch.zeros(2, 2, 4, 4), _space(0.7))
    with pytest.raises(ValueError, match="scale_factor=0.7 but the latent space has 0.5"):
        load_latents(path, _space(0.5))
    with pytest.raises(FileNotFoundError, match="cache_latents=true"):
        load_latents(tmp_path / "missing.safetensors")

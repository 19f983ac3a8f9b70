"""Stable Diffusion's VAE loader against diffusers' AutoencoderKL (skipped without diffusers)."""

import json

import pytest
import torch

from sde.models.sd_vae import CONFIG, WEIGHTS, load_sd_vae

CONFIGS = [  # small random configs: f = 2, 4, 8; shortcut convs; with and without quant convs
    dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4),
    dict(block_out_channels=(8, 16, 16), layers_per_block=2, latent_channels=3, norm_num_groups=8,
         in_channels=1, out_channels=1, mid_block_add_attention=False),
    dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4,
         norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False),
]


def _diffusers_vae(tmp_path, config, seed=0):
    """A diffusers AutoencoderKL with every parameter randomised (norms too), saved to tmp_path."""
    diffusers = pytest.importorskip("diffusers")
    n = len(config["block_out_channels"])
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                                  up_block_types=("UpDecoderBlock2D",) * n, **config).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vae.save_pretrained(tmp_path, safe_serialization=True)
    return vae


@pytest.mark.parametrize("config", CONFIGS, ids=["f2", "f4_gray_noattn", "f8_noquant"])
def test_matches_diffusers_encode_and_decode(tmp_path, config):
    vae = _diffusers_vae(tmp_path, config)
    ours = load_sd_vae(tmp_path)
    c = config.get("in_channels", 3)
    x = torch.rand(2, c, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        theirs = vae.encode(x).latent_dist
        mine = ours.encode(x)
        torch.testing.assert_close(mine.mean, theirs.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.std, theirs.std, atol=1e-5, rtol=1e-5)
        z = theirs.mean
        torch.testing.assert_close(ours.decode(z), vae.decode(z).sample, atol=1e-5, rtol=1e-5)
    assert ours.scaling_factor == pytest.approx(vae.config.scaling_factor)


def test_old_attention_key_names_load_the_same(tmp_path):
    """Pre-0.14 diffusers files name attention query/key/value/proj_attn."""
    from safetensors.torch import load_file, save_file

    vae = _diffusers_vae(tmp_path, CONFIGS[0])
    state = load_file(str(tmp_path / WEIGHTS))
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in state.items():
        for new_name, old_name in old.items():
            key = key.replace(f"attentions.0.{new_name}.", f"attentions.0.{old_name}.")
        renamed[key] = value
    assert any("proj_attn" in k for k in renamed)
    save_file(renamed, str(tmp_path / WEIGHTS))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(load_sd_vae(tmp_path).encode(x).mean,
                                   vae.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-5)


def test_missing_folder_and_files_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_sd_vae(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=CONFIG):
        load_sd_vae(tmp_path)
    (tmp_path / CONFIG).write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        load_sd_vae(tmp_path)
    (tmp_path / CONFIG).write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="only diffusers' AutoencoderKL"):
        load_sd_vae(tmp_path)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _diffusers_vae(tmp_path, CONFIGS[0])
    state = load_file(str(tmp_path / WEIGHTS))
    state.pop("decoder.conv_out.bias")
    save_file(state, str(tmp_path / WEIGHTS))
    with pytest.raises(ValueError, match="1 missing"):
        load_sd_vae(tmp_path)

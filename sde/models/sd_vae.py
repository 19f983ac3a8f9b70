"""Stable Diffusion's VAE from a local diffusers folder into `AutoencoderKL`.

A diffusers `AutoencoderKL` folder holds `config.json` and `diffusion_pytorch_model.safetensors`
(what `save_pretrained` writes, e.g. a downloaded `stabilityai/sd-vae-ft-mse` or the `vae/`
folder of a Stable Diffusion snapshot). Only safetensors are read: nothing in the folder is
executed. Both attention key layouts are understood: the current `to_q/to_k/to_v/to_out.0`
and the pre-0.14 `query/key/value/proj_attn` (Linear weights (C, C) or LDM's 1x1 convs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from sde.models.autoencoder import AutoencoderKL

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"

_ATTENTION = {"to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v", "value": "v",
              "to_out.0": "proj_out", "proj_attn": "proj_out", "group_norm": "norm"}
_RESNET = {"conv_shortcut": "nin_shortcut"}
_TOP = {"conv_norm_out": "norm_out"}


def _read_config(folder: Path) -> dict:
    """config.json of a diffusers AutoencoderKL, with a clear error when absent or another model."""
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers VAE folder: {CONFIG} is missing "
                                f"(expected {CONFIG} and {WEIGHTS}, as save_pretrained writes)")
    config = json.loads(path.read_text())
    kind = config.get("_class_name", "AutoencoderKL")
    if kind != "AutoencoderKL":
        raise ValueError(f"{path} describes a {kind}; only diffusers' AutoencoderKL is supported")
    return config


def _check_blocks(config: dict) -> None:
    """Only the plain DownEncoderBlock2D / UpDecoderBlock2D with SiLU are this architecture."""
    for key, kind in (("down_block_types", "DownEncoderBlock2D"),
                      ("up_block_types", "UpDecoderBlock2D")):
        found = set(config.get(key, [kind]))
        if found != {kind}:
            raise ValueError(f"{key}={sorted(found)} is not supported: only {kind}")
    if config.get("act_fn", "silu") != "silu":
        raise ValueError(f"act_fn={config['act_fn']!r} is not supported: only 'silu'")


def autoencoder_kwargs(config: dict) -> dict:
    """`AutoencoderKL` keyword arguments from a diffusers AutoencoderKL config."""
    _check_blocks(config)
    widths = [int(c) for c in config.get("block_out_channels", [64])]
    if any(c % widths[0] for c in widths):
        raise ValueError(f"block_out_channels={widths} must be multiples of the first "
                         "(this autoencoder is parametrised as ch * ch_mult)")
    return dict(
        in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3),
        ch=widths[0], ch_mult=tuple(c // widths[0] for c in widths),
        num_res_blocks=config.get("layers_per_block", 1),
        z_channels=config.get("latent_channels", 4), num_groups=config.get("norm_num_groups", 32),
        mid_attention=config.get("mid_block_add_attention", True),
        use_quant_conv=config.get("use_quant_conv", True),
        use_post_quant_conv=config.get("use_post_quant_conv", True),
        scaling_factor=config.get("scaling_factor", 0.18215),
        shift_factor=config.get("shift_factor"))


def _rename_block(rest: str) -> str:
    """`resnets.J.*`, `attentions.0.*`, `down/upsamplers.0.conv.*` inside a diffusers block."""
    rest = re.sub(r"^resnets\.(\d+)\.", r"block.\1.", rest)
    rest = re.sub(r"^downsamplers\.0\.", "downsample.", rest)
    rest = re.sub(r"^upsamplers\.0\.", "upsample.", rest)
    for old, new in _RESNET.items():
        rest = re.sub(rf"^(block\.\d+)\.{old}\.", rf"\1.{new}.", rest)
    return rest


def _rename_mid(rest: str) -> str:
    """`mid_block.resnets.{0,1}` -> `mid.block_{1,2}`, `mid_block.attentions.0` -> `mid.attn_1`."""
    found = re.match(r"^resnets\.(\d+)\.(.*)$", rest)
    if found:
        tail = found.group(2)
        for old, new in _RESNET.items():
            tail = re.sub(rf"^{old}\.", f"{new}.", tail)
        return f"block_{int(found.group(1)) + 1}.{tail}"
    found = re.match(r"^attentions\.0\.(.*)\.(weight|bias)$", rest)
    if found and found.group(1) in _ATTENTION:
        return f"attn_1.{_ATTENTION[found.group(1)]}.{found.group(2)}"
    raise KeyError(rest)


def diffusers_to_ldm_key(key: str, num_levels: int) -> str:
    """The `AutoencoderKL` key of one diffusers AutoencoderKL key (KeyError when unknown)."""
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv"):
        return key
    if part not in ("encoder", "decoder"):
        raise KeyError(key)
    found = re.match(r"^(down|up)_blocks\.(\d+)\.(.*)$", rest)
    if found:
        i = int(found.group(2))
        level = i if found.group(1) == "down" else num_levels - 1 - i  # diffusers counts up-blocks
        return f"{part}.{found.group(1)}.{level}.{_rename_block(found.group(3))}"  # from the bottom
    if rest.startswith("mid_block."):
        return f"{part}.mid.{_rename_mid(rest[len('mid_block.'):])}"
    head, _, tail = rest.partition(".")
    return f"{part}.{_TOP.get(head, head)}.{tail}"


def convert_state_dict(state: dict, model: AutoencoderKL) -> dict:
    """A diffusers AutoencoderKL state dict renamed (and attention weights reshaped) for `model`."""
    num_levels = len(model.encoder.down)
    target = model.state_dict()
    out, unknown = {}, []
    for key, value in state.items():
        try:
            new = diffusers_to_ldm_key(key, num_levels)
        except KeyError:
            unknown.append(key)
            continue
        if new not in target:
            unknown.append(key)
            continue
        out[new] = _fit_shape(value, target[new], key)
    missing = sorted(set(target) - set(out))
    if unknown or missing:
        raise ValueError(f"the weights do not match config.json: {len(unknown)} unexpected keys "
                         f"(e.g. {unknown[:3]}), {len(missing)} missing (e.g. {missing[:3]})")
    return out


def _fit_shape(value: torch.Tensor, like: torch.Tensor, key: str) -> torch.Tensor:
    """Linear (C, C) attention weights as 1x1 convs (C, C, 1, 1); any other mismatch is an error."""
    if value.shape == like.shape:
        return value
    if value.numel() == like.numel() and value.squeeze().shape == like.squeeze().shape:
        return value.reshape(like.shape)
    raise ValueError(f"{key}: shape {tuple(value.shape)} in the file, {tuple(like.shape)} "
                     "expected from config.json")


def load_sd_vae(folder, *, device=None, dtype=torch.float32) -> AutoencoderKL:
    """`AutoencoderKL` with the weights of a diffusers AutoencoderKL folder (see module doc)."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder} (pass the diffusers VAE folder that "
                                f"holds {CONFIG} and {WEIGHTS})")
    model = AutoencoderKL(**autoencoder_kwargs(_read_config(folder)))
    weights = folder / WEIGHTS
    if not weights.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"{weights} is missing (found {found}); only safetensors are "
                                "read: convert a .bin with diffusers' save_pretrained "
                                "(safe_serialization=True)")
    model.load_state_dict(convert_state_dict(load_file(str(weights)), model))
    return model.to(device=device, dtype=dtype).eval()

"""Read yang-song/score_sde_pytorch checkpoints: build the matching network of this codebase
and map the released weights (raw and EMA) onto it, exactly.

score_sde keeps its blocks in one flat `all_modules` list; our `NCSNpp` / `DDPM` keep theirs in
`model.blocks`, an `nn.ModuleDict` built in the same order, so reference module `i` is our block
`list(model.blocks)[i]`. Inside each block, parameter names are renamed, score_sde's `NIN`
layers (W of shape (in, out)) become 1x1 convolutions, and the q/k/v `NIN`s of an attention
block are stacked into one `qkv` convolution. The reference's `sigmas` buffer is dropped: our
networks never index a noise table (the time input is an option of `get_score_fn`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sde.models.layers import AttnBlock, Combine, Downsample, ResnetBlock, Upsample

DROPPED_KEYS = ("sigmas",)  # noise table of score_sde's models: not a weight

# score_sde config keys of NCSNpp -> our keyword arguments (same meaning)
_NCSNPP_KEYS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
                "resamp_with_conv", "conditional", "resblock_type", "fir", "fir_kernel",
                "skip_rescale", "embedding_type", "fourier_scale", "progressive",
                "progressive_input", "progressive_combine", "init_scale", "nonlinearity")
_DDPM_KEYS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
              "resamp_with_conv", "nonlinearity")


def _lower(value):
    return value.lower() if isinstance(value, str) else value


def model_spec(config: Mapping) -> tuple[str, dict]:
    """(`_target_`, keyword arguments) of our network for a score_sde config with `model`,
    `data` and `training` sections (the fixtures' NAME.json, or a dumped ml_collections config)."""
    model, data, training = config["model"], config["data"], config["training"]
    name = model["name"]
    common = dict(image_size=int(data["image_size"]), in_channels=int(data["num_channels"]),
                  centered=bool(data["centered"]))
    discrete_ve = training["sde"].lower() == "vesde" and not training["continuous"]
    if name == "ddpm":  # score_sde's DDPM divides by a sigma table: only valid for discrete VE
        if model.get("scale_by_sigma", False) and not discrete_ve:
            raise ValueError("score_sde DDPM with scale_by_sigma=True is only supported for "
                             "discrete VE (SMLD) training")
        kwargs = {k: _lower(model[k]) for k in _DDPM_KEYS if k in model}
        return "sde.models.ddpm.DDPM", _listify({**common, **kwargs})
    if name != "ncsnpp":
        raise ValueError(f"score_sde model {name!r} is not supported; supported: 'ncsnpp', 'ddpm'")
    # keys a config leaves out (e.g. fourier_scale with a positional embedding) take our
    # defaults, which are score_sde's
    kwargs = {k: _lower(model[k]) for k in _NCSNPP_KEYS if k in model}
    # scale_by_sigma divides by cond; for discrete (positional) VE models cond is a step, so the
    # division by sigma moves into get_score_fn (prediction='scaled_score').
    kwargs["scale_by_sigma"] = bool(model.get("scale_by_sigma", False)) and not discrete_ve
    return "sde.models.ncsnpp.NCSNpp", _listify({**common, **kwargs})


def _listify(kwargs: dict) -> dict:
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in kwargs.items()}


def score_fn_options(config: Mapping) -> dict:
    """`get_score_fn` options reproducing score_sde's `get_score_fn(sde, model, continuous)`."""
    model, training = config["model"], config["training"]
    sde_name, continuous = training["sde"].lower(), bool(training["continuous"])
    scale_by_sigma = bool(model.get("scale_by_sigma", False))
    if sde_name in ("vpsde", "subvpsde"):
        if scale_by_sigma:
            raise ValueError("score_sde VP / sub-VP models with scale_by_sigma=True are not "
                             "supported")
        if continuous or sde_name == "subvpsde":  # std rounded as score_sde does: exact match
            return {"prediction": "eps", "time_input": "t", "std": "score_sde"}
        return {"prediction": "eps", "time_input": "step", "std": "exact"}
    if sde_name == "vesde":
        if continuous:
            return {"prediction": "score", "time_input": "sigma", "std": "exact"}
        return {"prediction": "scaled_score" if scale_by_sigma else "score",
                "time_input": "smld_step", "std": "exact"}
    raise ValueError(f"unknown score_sde sde {training['sde']!r}; expected vpsde, subvpsde, vesde")


def build_model(config: Mapping) -> nn.Module:
    """Our network for a score_sde config (see `model_spec`)."""
    target, kwargs = model_spec(config)
    module_name, cls_name = target.rsplit(".", 1)
    module = __import__(module_name, fromlist=[cls_name])
    return getattr(module, cls_name)(**kwargs)


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def _nin_to_conv(w: torch.Tensor) -> torch.Tensor:
    """score_sde NIN weight (in, out) -> 1x1 conv weight (out, in, 1, 1)."""
    return w.t()[:, :, None, None]


def _map_block(ours: nn.Module, ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our parameter names -> tensors, for one block given its reference tensors by local name."""
    if isinstance(ours, ResnetBlock):
        names = {"GroupNorm_0": "norm0", "Conv_0": "conv0", "Dense_0": "dense",
                 "GroupNorm_1": "norm1", "Conv_1": "conv1", "Conv_2": "skip"}
        out = {}
        for key, value in ref.items():
            layer, param = key.split(".")
            if layer == "NIN_0":
                out["skip." + {"W": "weight", "b": "bias"}[param]] = (
                    _nin_to_conv(value) if param == "W" else value)
            elif layer in names:
                out[f"{names[layer]}.{param}"] = value
            else:
                raise KeyError(key)
        return out
    if isinstance(ours, AttnBlock):
        out = {"norm.weight": ref.pop("GroupNorm_0.weight"),
               "norm.bias": ref.pop("GroupNorm_0.bias"),
               "qkv.weight": torch.cat([_nin_to_conv(ref.pop(f"NIN_{i}.W")) for i in range(3)]),
               "qkv.bias": torch.cat([ref.pop(f"NIN_{i}.b") for i in range(3)]),
               "proj.weight": _nin_to_conv(ref.pop("NIN_3.W")), "proj.bias": ref.pop("NIN_3.b")}
        if ref:
            raise KeyError(next(iter(ref)))
        return out
    if isinstance(ours, (Upsample, Downsample, Combine)):
        prefixes = ("Conv_0.", "Conv2d_0.", "Conv.")
        out = {}
        for key, value in ref.items():
            if not key.startswith(prefixes):
                raise KeyError(key)
            out["conv." + key.split(".", 1)[1]] = value
        return out
    return dict(ref)  # Linear, Conv2d, GroupNorm, GaussianFourierProjection, FIRConv2d: same names


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's "module." prefix."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _group_by_module(state_dict: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in DROPPED_KEYS:
            continue
        head, index, local = (key.split(".", 2) + ["", ""])[:3]
        if head != "all_modules" or not index.isdigit() or not local:
            raise ValueError(f"unexpected key {key!r} in the score_sde state dict")
        groups.setdefault(int(index), {})[local] = value
    return groups


def convert_state_dict(ref_state_dict: Mapping[str, torch.Tensor], *, model: nn.Module
                       ) -> dict[str, torch.Tensor]:
    """Map a score_sde `NCSNpp` / `DDPM` state dict onto `model` (built by `build_model`).

    Every reference key must map onto a tensor of `model` of the same shape, and every tensor of
    `model`'s state dict must be covered; otherwise a ValueError names the key.
    """
    names = list(model.blocks.keys())
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for index, ref in sorted(_group_by_module(_strip_prefix(ref_state_dict)).items()):
        if index >= len(names):
            raise ValueError(f"all_modules.{index}: the reference has more modules than our "
                             f"model ({len(names)}); is the config the checkpoint's own?")
        block = model.blocks[names[index]]
        try:
            mapped = _map_block(block, dict(ref))
        except KeyError as err:
            raise ValueError(f"all_modules.{index}.{err.args[0]}: no counterpart in our block "
                             f"{names[index]!r} ({type(block).__name__})") from None
        for local, value in mapped.items():
            key = f"blocks.{names[index]}.{local}"
            if key not in ours:
                raise ValueError(f"all_modules.{index} maps to {key!r}, which our model lacks")
            if ours[key].shape != value.shape:
                raise ValueError(f"all_modules.{index} -> {key!r}: shape {tuple(value.shape)} in "
                                 f"the checkpoint, {tuple(ours[key].shape)} in our model")
            out[key] = value.detach().clone().to(ours[key].dtype)
    missing = [k for k in ours if k not in out]
    if missing:
        raise ValueError(f"our model's {missing[0]!r} (and {len(missing) - 1} more) has no "
                         f"counterpart in the checkpoint")
    return out


def trainable_reference_keys(ref_state_dict: Mapping[str, torch.Tensor], *, model: nn.Module
                             ) -> list[str]:
    """The reference keys of its trainable parameters, in `model.parameters()` order: the keys of
    its state dict minus buffers (`sigmas`) and the frozen Fourier weights."""
    names = list(model.blocks.keys())
    keys = []
    for key in _strip_prefix(ref_state_dict):
        if key in DROPPED_KEYS:
            continue
        index = int(key.split(".")[1])
        if names[index] == "fourier":  # GaussianFourierProjection.W: requires_grad=False
            continue
        keys.append(key)
    return keys


def convert_ema(shadow_params: Sequence[torch.Tensor], ref_state_dict: Mapping[str, torch.Tensor],
                *, model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict with score_sde's EMA weights: `shadow_params` (its trainable parameters in
    `model.parameters()` order) placed on the raw state dict's keys, frozen tensors copied."""
    keys = trainable_reference_keys(ref_state_dict, model=model)
    if len(keys) != len(shadow_params):
        raise ValueError(f"EMA holds {len(shadow_params)} tensors but the model has {len(keys)} "
                         f"trainable parameters")
    ema = {k: v for k, v in _strip_prefix(ref_state_dict).items()}
    for key, value in zip(keys, shadow_params):
        if ema[key].shape != value.shape:
            raise ValueError(f"EMA tensor for {key!r} is shaped {tuple(value.shape)}, "
                             f"expected {tuple(ema[key].shape)}")
        ema[key] = value
    return convert_state_dict(ema, model=model)


def convert_checkpoint(checkpoint: Mapping, config: Mapping) -> dict:
    """A score_sde checkpoint dict (model, ema, step) -> our model (EMA weights loaded), its raw
    and EMA state dicts, the step, and the `get_score_fn` options."""
    model = build_model(config)
    raw = convert_state_dict(checkpoint["model"], model=model)
    ema = convert_ema(checkpoint["ema"]["shadow_params"], checkpoint["model"], model=model)
    model.load_state_dict(ema)
    return {"model": model, "state_dict": raw, "ema_state_dict": ema,
            "step": int(checkpoint.get("step", 0)), "score_fn_options": score_fn_options(config)}


__all__ = ["build_model", "model_spec", "score_fn_options", "convert_state_dict", "convert_ema",
           "convert_checkpoint", "trainable_reference_keys"]

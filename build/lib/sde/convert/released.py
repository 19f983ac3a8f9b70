"""The released yang-song/score_sde_pytorch configs, by the name of their config file
(`configs/<NAME>.py`), with the experiment of this codebase each one converts into.

Each entry holds the reference's own values (its `default_*_configs.py` with the file's changes
applied; only the `training`, `data`, `model` and `sampling` keys that decide the model), the
experiment (`conf/experiment/<experiment>.yaml`) whose remaining settings (optimiser, trainer)
the converted run takes, and Hydra overrides where no experiment matches exactly.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Released:
    """One released config: score_sde's values, our experiment, and Hydra overrides to it."""

    config: dict
    experiment: str
    overrides: tuple[str, ...] = field(default=())


def _merge(base: Mapping, changes: Mapping) -> dict:
    """`base` with `changes` applied section by section (a config file on its defaults)."""
    out = copy.deepcopy(dict(base))
    for section, values in changes.items():
        out[section] = {**out.get(section, {}), **values}
    return out


# configs/default_cifar10_configs.py
_CIFAR10 = {
    "training": {"batch_size": 128, "n_iters": 1300001, "likelihood_weighting": False,
                 "continuous": True, "reduce_mean": False},
    "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False,
                 "snr": 0.16},
    "data": {"dataset": "CIFAR10", "image_size": 32, "random_flip": True, "centered": False,
             "uniform_dequantization": False, "num_channels": 3},
    "model": {"sigma_min": 0.01, "sigma_max": 50, "num_scales": 1000, "beta_min": 0.1,
              "beta_max": 20.0, "dropout": 0.1, "embedding_type": "fourier"},
}
# configs/default_lsun_configs.py (also the base of the FFHQ and CelebA-HQ 256x256 configs)
_LSUN = {
    "training": {"batch_size": 64, "n_iters": 2400001, "likelihood_weighting": False,
                 "continuous": True, "reduce_mean": False},
    "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False,
                 "snr": 0.075},
    "data": {"dataset": "LSUN", "image_size": 256, "random_flip": True,
             "uniform_dequantization": False, "centered": False, "num_channels": 3},
    "model": {"sigma_max": 378, "sigma_min": 0.01, "num_scales": 2000, "beta_min": 0.1,
              "beta_max": 20.0, "dropout": 0.0, "embedding_type": "fourier"},
}
# the network keys shared by the NCSN++ / DDPM++ configs (configs/ve/cifar10_ncsnpp_continuous.py)
_NCSNPP = {"name": "ncsnpp", "scale_by_sigma": True, "ema_rate": 0.999,
           "normalization": "GroupNorm", "nonlinearity": "swish", "nf": 128,
           "ch_mult": [1, 2, 2, 2], "num_res_blocks": 4, "attn_resolutions": [16],
           "resamp_with_conv": True, "conditional": True, "fir": True,
           "fir_kernel": [1, 3, 3, 1], "skip_rescale": True, "resblock_type": "biggan",
           "progressive": "none", "progressive_input": "residual",
           "progressive_combine": "sum", "attention_type": "ddpm", "init_scale": 0.0,
           "fourier_scale": 16, "conv_size": 3}
# configs/vp/cifar10_ddpmpp_continuous.py's network: NCSN++ without FIR, Fourier features,
# input pyramid or output scaling
_DDPMPP = {**_NCSNPP, "scale_by_sigma": False, "ema_rate": 0.9999, "fir": False,
           "progressive_input": "none", "embedding_type": "positional"}
# configs/ve/{bedroom,church,ffhq_256,celebahq_256}_ncsnpp_continuous.py's network
_NCSNPP_256 = {**_NCSNPP, "ch_mult": [1, 1, 2, 2, 2, 2, 2], "num_res_blocks": 2,
               "progressive": "output_skip", "progressive_input": "input_skip"}
_VE = {"training": {"sde": "vesde", "continuous": True},
       "sampling": {"method": "pc", "predictor": "reverse_diffusion", "corrector": "langevin"}}
_EULER = {"method": "pc", "predictor": "euler_maruyama", "corrector": "none"}
_ANCESTRAL = {"method": "pc", "predictor": "ancestral_sampling", "corrector": "none"}
_DEEP = {"n_iters": 950001}


def _cifar(training: dict, sampling: dict, model: dict, centered: bool) -> dict:
    return _merge(_CIFAR10, {"training": training, "sampling": sampling,
                             "data": {"centered": centered}, "model": model})


def _ve_256(dataset: str, sigma_max: float) -> dict:
    return _merge(_LSUN, {**_VE, "data": {"dataset": dataset},
                          "model": {**_NCSNPP_256, "sigma_max": sigma_max}})


# configs/ve/ffhq_ncsnpp_continuous.py: a config of its own (no defaults file)
_FFHQ_1024 = {
    "training": {"batch_size": 8, "n_iters": 2400001, "sde": "vesde", "continuous": True,
                 "likelihood_weighting": False, "reduce_mean": True},
    "sampling": {"method": "pc", "predictor": "reverse_diffusion", "corrector": "langevin",
                 "probability_flow": False, "snr": 0.15, "n_steps_each": 1,
                 "noise_removal": True},
    "data": {"dataset": "FFHQ", "image_size": 1024, "centered": False, "random_flip": True,
             "uniform_dequantization": False, "num_channels": 3},
    "model": {**_NCSNPP, "scale_by_sigma": True, "sigma_max": 1348, "num_scales": 2000,
              "ema_rate": 0.9999, "sigma_min": 0.01, "beta_min": 0.1, "beta_max": 20.0,
              "nf": 16, "ch_mult": [1, 2, 4, 8, 16, 32, 32, 32], "num_res_blocks": 1,
              "dropout": 0.0, "progressive": "output_skip", "progressive_input": "input_skip",
              "embedding_type": "fourier"},
}

_VP_CONT = {"sde": "vpsde", "continuous": True, "reduce_mean": True}
_SUBVP_CONT = {"sde": "subvpsde", "continuous": True, "reduce_mean": True}
_DDPM_NET = {"name": "ddpm", "scale_by_sigma": False, "ema_rate": 0.9999,
             "normalization": "GroupNorm", "nonlinearity": "swish", "nf": 128,
             "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16],
             "resamp_with_conv": True, "conditional": True}

RELEASED: dict[str, Released] = {
    # VP / sub-VP SDE, DDPM++ (cont.), data in [-1, 1]
    "vp/cifar10_ddpmpp_continuous": Released(
        _cifar(_VP_CONT, _EULER, _DDPMPP, True), "vp_cifar"),
    "vp/cifar10_ddpmpp_deep_continuous": Released(
        _cifar({**_VP_CONT, **_DEEP}, _EULER, {**_DDPMPP, "num_res_blocks": 8}, True),
        "vp_cifar_deep"),
    "subvp/cifar10_ddpmpp_continuous": Released(
        _cifar(_SUBVP_CONT, _EULER, _DDPMPP, True), "subvp_cifar"),
    "subvp/cifar10_ddpmpp_deep_continuous": Released(
        _cifar({**_SUBVP_CONT, **_DEEP}, _EULER, {**_DDPMPP, "num_res_blocks": 8}, True),
        "subvp_cifar", ("model=ddpmpp_deep",)),
    # discrete DDPM++ (DDPM's chain, the network sees the step index)
    "vp/cifar10_ddpmpp": Released(
        _cifar({"sde": "vpsde", "continuous": False, "reduce_mean": True}, _ANCESTRAL,
               _DDPMPP, True),
        "vp_cifar", ("loss=ddpm", "~loss.eps", "score.time_input=step",
                     "sampler.predictor=ancestral_sampling", "sampler.steps=null")),
    # DDPM (Ho et al. 2020) in score_sde
    "vp/ddpm/cifar10": Released(
        _cifar({"sde": "vpsde", "continuous": False, "reduce_mean": True}, _ANCESTRAL,
               _DDPM_NET, True),
        "ddpm_cifar"),
    # VE SDE, NCSN++ (cont.), data in [0, 1]
    "ve/cifar10_ncsnpp_continuous": Released(
        _cifar(_VE["training"], _VE["sampling"], _NCSNPP, False), "ve_cifar"),
    "ve/cifar10_ncsnpp_deep_continuous": Released(
        _cifar({**_VE["training"], **_DEEP}, _VE["sampling"], {**_NCSNPP, "num_res_blocks": 8},
               False),
        "ve_cifar_deep"),
    # discrete NCSN++ (SMLD's noise scales, the network sees the scale index)
    "ve/cifar10_ncsnpp": Released(
        _cifar({"sde": "vesde", "continuous": False}, _VE["sampling"],
               {**_NCSNPP, "embedding_type": "positional"}, False),
        "ve_cifar", ("loss=smld", "~loss.eps", "model.embedding_type=positional",
                     "model.scale_by_sigma=false", "score.prediction=scaled_score",
                     "score.time_input=smld_step", "sampler.steps=null")),
    # high resolution, VE SDE, NCSN++ (cont.) with FIR, output skips and an input pyramid
    "ve/bedroom_ncsnpp_continuous": Released(_ve_256("LSUN", 378), "ve_bedroom"),
    "ve/church_ncsnpp_continuous": Released(_ve_256("LSUN", 380), "ve_church"),
    "ve/ffhq_256_ncsnpp_continuous": Released(_ve_256("FFHQ", 348), "ve_ffhq_256"),
    "ve/celebahq_256_ncsnpp_continuous": Released(_ve_256("CelebAHQ", 348), "ve_celebahq_256"),
    "ve/ffhq_ncsnpp_continuous": Released(copy.deepcopy(_FFHQ_1024), "ve_ffhq_1024"),
}


def normalize_name(name: str) -> str:
    """'configs/vp/cifar10_ddpmpp_continuous.py' or 'configs.vp.cifar10_ddpmpp_continuous'
    -> 'vp/cifar10_ddpmpp_continuous'."""
    name = str(name).strip().removesuffix(".py")
    if "/" not in name and name.startswith("configs."):
        name = name.replace(".", "/")
    return name.removeprefix("configs/")


def released(name: str) -> Released:
    """The released config `name`; a ValueError listing the known names otherwise."""
    key = normalize_name(name)
    if key not in RELEASED:
        raise ValueError(f"unknown score_sde config {name!r}; known: {', '.join(RELEASED)}; or "
                         f"pass config=FILE.json holding its training, data and model sections")
    return RELEASED[key]


def family_experiment(config: Mapping) -> Released:
    """The released entry a custom score_sde config is closest to (same SDE, network and
    continuous/discrete time): its experiment and overrides serve as the base."""
    training, model = config["training"], config["model"]
    sde_name, continuous = str(training["sde"]).lower(), bool(training["continuous"])
    if str(model["name"]).lower() == "ddpm":
        return RELEASED["vp/ddpm/cifar10"]
    key = {("vpsde", True): "vp/cifar10_ddpmpp_continuous",
           ("vpsde", False): "vp/cifar10_ddpmpp",
           ("subvpsde", True): "subvp/cifar10_ddpmpp_continuous",
           ("vesde", True): "ve/cifar10_ncsnpp_continuous",
           ("vesde", False): "ve/cifar10_ncsnpp"}.get((sde_name, continuous))
    if key is None:
        raise ValueError(f"no experiment for a score_sde config with sde={sde_name}, "
                         f"continuous={continuous}")
    return RELEASED[key]


def load_config(config: str) -> tuple[dict, Released]:
    """(score_sde config, base entry) for `config=`: a released name or a JSON file."""
    path = Path(config).expanduser()
    if str(config).endswith(".json"):
        if not path.is_file():
            raise ValueError(f"config={config}: no such JSON file")
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"config={config}: expected a JSON object with training, data and "
                             "model sections")
        module = values.get("reference_config_module")
        key = normalize_name(module) if module else None
        base = RELEASED[key] if key in RELEASED else None
        for section in ("training", "data", "model"):
            if section not in values:
                raise ValueError(f"config={config} lacks the `{section}` section (it needs "
                                 "training, data and model)")
        return values, base or family_experiment(values)
    entry = released(config)
    return copy.deepcopy(entry.config), entry

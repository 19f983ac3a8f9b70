"""Translate a yang-song/score_sde_pytorch config (its `training`, `data`, `model` and, optionally,
`sampling` sections, as plain dicts) into the sections of this codebase's config.

Only what the reference's config decides is translated: the SDE and its parameters, the network's
keyword arguments (`sde.convert.score_sde.model_spec`), how the network output becomes a score
and what it sees as time (`score`, from `score_fn_options`), the data shape and scaling, the loss,
the EMA rate and batch size, and the PC sampler. Everything else (optimiser, logging,
trainer details) comes from the experiment the config is composed on (`sde.convert.export`).
"""

from __future__ import annotations

from collections.abc import Mapping

from sde.convert.score_sde import model_spec, score_fn_options

SECTIONS = ("training", "data", "model")
TIME_SCALE = 999.0  # score_sde's continuous VP / sub-VP models see 999 t
# score_sde settings our networks implement; anything else is refused with its name
SUPPORTED = {"normalization": ("GroupNorm",), "attention_type": ("ddpm",), "conv_size": (3,)}
# keys score_sde's NCSNpp reads only in branches a config may not take (e.g. fourier_scale
# with positional embeddings): missing ones get these inert values
NCSNPP_INERT = {"fourier_scale": 16, "fir_kernel": [1, 3, 3, 1], "init_scale": 0.0,
                "progressive": "none", "progressive_input": "none",
                "progressive_combine": "sum", "fir": False}
_SDES = {"vpsde": ("sde.sdes.VPSDE", ("beta_min", "beta_max")),
         "subvpsde": ("sde.sdes.SubVPSDE", ("beta_min", "beta_max")),
         "vesde": ("sde.sdes.VESDE", ("sigma_min", "sigma_max"))}
# score_sde dataset names -> our data source (every non-CIFAR set is an image folder)
_CIFAR = ("cifar10",)


def check_config(config: Mapping) -> None:
    """A ValueError naming what a score_sde config lacks or sets to something unsupported."""
    missing = [s for s in SECTIONS if not isinstance(config.get(s), Mapping)]
    if missing:
        raise ValueError(f"score_sde config lacks the section(s) {missing}: it needs `training`, "
                         f"`data` and `model` (dump them with config.to_dict())")
    need = {"training": ("sde", "continuous"),
            "data": ("dataset", "image_size", "num_channels", "centered"),
            "model": ("name", "num_scales", "nf", "ch_mult", "num_res_blocks",
                      "attn_resolutions", "dropout", "resamp_with_conv", "nonlinearity")}
    for section, keys in need.items():
        for key in keys:
            if key not in config[section]:
                raise ValueError(f"score_sde config lacks {section}.{key}")
    sde_name = str(config["training"]["sde"]).lower()
    if sde_name not in _SDES:
        raise ValueError(f"score_sde training.sde={config['training']['sde']!r} is not supported; "
                         f"choose one of {sorted(_SDES)}")
    for key in _SDES[sde_name][1]:
        if key not in config["model"]:
            raise ValueError(f"score_sde config lacks model.{key} (needed by {sde_name})")
    for key, allowed in SUPPORTED.items():
        value = config["model"].get(key, allowed[0])
        if value not in allowed:
            raise ValueError(f"score_sde model.{key}={value!r} is not supported (only {allowed})")


def complete_model(model: Mapping) -> dict:
    """The model section with score_sde's inert NCSNpp keys filled in where absent."""
    if str(model["name"]).lower() != "ncsnpp":
        return dict(model)
    required = ("conditional", "resblock_type", "skip_rescale", "embedding_type", "scale_by_sigma")
    for key in required:
        if key not in model:
            raise ValueError(f"score_sde config lacks model.{key} (read by its NCSNpp)")
    return {**NCSNPP_INERT, **model}


def sde_section(config: Mapping) -> dict:
    """`sde` section: the SDE class (`_target_`) and its parameters; N = model.num_scales."""
    name = str(config["training"]["sde"]).lower()
    target, keys = _SDES[name]
    model = config["model"]
    zero_snr = {"zero_terminal_snr": False} if name == "vpsde" else {}  # score_sde has none
    return {"_target_": target, **{k: float(model[k]) for k in keys},
            "N": int(model["num_scales"]), **zero_snr}


def model_section(config: Mapping) -> dict:
    """`model` section: our network's `_target_` and keyword arguments."""
    target, kwargs = model_spec(config)
    return {"_target_": target, **kwargs}


def score_section(config: Mapping) -> dict:
    """`score` section: the `get_score_fn` options reproducing score_sde's `get_score_fn`."""
    return {**score_fn_options(config), "time_scale": TIME_SCALE}


def data_section(config: Mapping) -> dict:
    """`data` section (shape, 8-bit levels, centering, flips, dequantization); non-CIFAR sets
    become an image folder of `image_size` pictures whose `root` the user supplies."""
    data = config["data"]
    size, channels = int(data["image_size"]), int(data["num_channels"])
    out = {"shape": [channels, size, size], "levels": 256, "centered": bool(data["centered"]),
           "random_flip": bool(data.get("random_flip", True)),
           "dequantize": bool(data.get("uniform_dequantization", False))}
    if str(data["dataset"]).lower() in _CIFAR:
        return {"name": "cifar10", **out}
    return {"name": "folder", "size": size, "channels": channels, **out}


def loss_section(config: Mapping) -> dict:
    """`loss` section: continuous DSM (Eq. 7), or DDPM / SMLD's discrete losses."""
    training = config["training"]
    reduce_mean = bool(training.get("reduce_mean", False))
    if training["continuous"]:
        weighting = bool(training.get("likelihood_weighting", False))
        return {"_target_": "sde.losses.dsm_loss", "_partial_": True, "eps": 1e-5,
                "likelihood_weighting": weighting, "importance_sampling": False,
                "reduce_mean": reduce_mean}
    name = "ddpm_loss" if str(training["sde"]).lower() == "vpsde" else "smld_loss"
    return {"_target_": f"sde.losses.{name}", "_partial_": True, "reduce_mean": reduce_mean}


def trainer_section(config: Mapping) -> dict:
    """The trainer keys a score_sde config sets: batch size and EMA rate. (Its n_iters, e.g.
    1300001, counts its loop's bound, not the iterations: the experiment's `steps` is kept.)"""
    training, model = config["training"], config["model"]
    keys = {"batch_size": training.get("batch_size"), "ema_decay": model.get("ema_rate")}
    return {k: v for k, v in keys.items() if v is not None}


def sampler_section(config: Mapping) -> dict:
    """The PC sampler keys a score_sde `sampling` section sets (empty if it has none), and the
    final time its run_lib uses (1e-3 for VP / sub-VP, 1e-5 for VE)."""
    sampling = config.get("sampling") or {}
    if not sampling:
        return {}
    vp_like = str(config["training"]["sde"]).lower() != "vesde"
    keys = {"eps": 1e-3 if vp_like else 1e-5,  # score_sde's run_lib: sampling_eps by SDE
            "predictor": sampling.get("predictor"), "corrector": sampling.get("corrector"),
            "snr": sampling.get("snr"), "n_steps": sampling.get("n_steps_each"),
            "probability_flow": sampling.get("probability_flow"),
            "denoise": sampling.get("noise_removal")}
    return {k: v for k, v in keys.items() if v is not None}


def translate(config: Mapping) -> dict:
    """Our config sections (sde, model, score, data, loss, trainer, sampler) for a score_sde
    config; `sde`, `model`, `score` are complete, the others list only the keys it decides."""
    check_config(config)
    config = {**config, "model": complete_model(config["model"])}
    return {"sde": sde_section(config), "model": model_section(config),
            "score": score_section(config), "data": data_section(config),
            "loss": loss_section(config), "trainer": trainer_section(config),
            "sampler": sampler_section(config)}

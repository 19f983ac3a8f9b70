"""`load_run`: a trained run, rebuilt from a checkpoint alone (see sde.runs.checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sde.runs.checkpoint import CheckpointError, check_finite_weights, latest_checkpoint, load_checkpoint
from sde.runs.env import resolve_device


@dataclass
class Run:
    """A trained model with everything needed to use it.

    sde: the SDE; model: the network (eval mode, on `device`); score_fn: `score_fn(x, t)` in
    model space (data scaled as in training); config: the resolved training config (dict);
    scaler / inverse_scaler: data in [0, 1] (images) or as is (continuous) <-> model space;
    shape: the shape of one example; data: the `data` config section; step: training steps done;
    path: the checkpoint file.
    """

    sde: object
    model: nn.Module
    score_fn: object
    config: dict
    scaler: object
    inverse_scaler: object
    shape: tuple
    data: dict
    step: int
    path: Path
    ema: bool
    latent: object = None        # a latent run's frozen sde.latent.LatentSpace, else None
    image_shape: tuple | None = None  # a latent run: the shape of one decoded image

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _instantiate(section: dict):
    from hydra.utils import instantiate

    return instantiate(section)


def load_run(path, *, ema: bool = True, device=None) -> Run:
    """Load a run directory (its newest checkpoint) or a checkpoint file of this codebase.

    The network gets the EMA weights unless `ema=False`, and is put in eval mode on `device`
    (default: CUDA if available, else CPU). NaN/Inf weights are refused with the tensor named.
    """
    from sde.data import data_scalers
    from sde.models import get_score_fn

    ckpt, file = _checkpoint(path)
    config = ckpt["config"]
    _check_score_run(config, file)
    device = resolve_device(device)
    sde, model = _sde_and_network(ckpt, file, ema=ema, device=device)
    data = config["data"]
    scaler, inverse_scaler = data_scalers(levels=data.get("levels"), centered=data["centered"])
    space, image_shape = None, None
    if config.get("latent"):  # model space = the scaled latents; inverse_scaler decodes
        from sde.latent.data import latent_scalers

        space = latent_space_of(config["latent"], file, device=device)
        scaler, inverse_scaler = latent_scalers(space, scaler, inverse_scaler)
        image_shape = tuple(config["latent"]["image_shape"])
    score_fn = get_score_fn(sde, model, **config.get("score", {}))
    return Run(sde=sde, model=model, score_fn=score_fn, config=config, scaler=scaler,
               inverse_scaler=inverse_scaler, shape=tuple(data["shape"]), data=data,
               step=int(ckpt["step"]), path=file, ema=ema, latent=space, image_shape=image_shape)


def _checkpoint(path) -> tuple[dict, Path]:
    """(checkpoint, its file): the newest checkpoint of a run directory, or a checkpoint file."""
    file = latest_checkpoint(path)
    if file is None:
        raise CheckpointError(f"no checkpoint in {path}: expected {Path(path)}/checkpoints/"
                              "ckpt_<step>.pt or a checkpoint file")
    return load_checkpoint(file), file


def _sde_and_network(ckpt: dict, file, *, ema: bool, device) -> tuple[object, nn.Module]:
    """The checkpoint's SDE and network (EMA or raw weights, checked finite), in eval mode on
    `device` with its parameters frozen."""
    weights = ckpt["ema"] if ema else ckpt["model"]
    check_finite_weights(weights, file, which="EMA" if ema else "raw")
    try:
        sde = _instantiate(ckpt["config"]["sde"])
        model = _instantiate(ckpt["config"]["model"])
        model.load_state_dict(weights)
    except (KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{file} does not match this codebase's networks/SDEs "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return sde, model.to(device).eval().requires_grad_(False)


@dataclass
class Classifier:
    """A trained noise-conditional classifier run (`task: classifier`, e.g.
    experiment=classifier_digits): its SDE, network (eval mode), resolved config, `data`
    section, training steps, checkpoint file and EMA flag."""

    sde: object
    model: nn.Module
    config: dict
    data: dict
    step: int
    path: Path
    ema: bool

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def log_prob_fn(self, labels: torch.Tensor):
        """`(x, t) -> log p_t(labels | x)` (B,) for the labels (B,) of a batch, in model space."""
        from sde.models.classifier import get_classifier_fn, time_options

        return get_classifier_fn(self.sde, self.model, **time_options(self.config.get("score", {})),
                                 model_kwargs={"class_labels": labels})


def load_classifier(path, *, ema: bool = True, device=None) -> Classifier:
    """Load a noise-conditional classifier run (its directory or a checkpoint), EMA weights
    unless `ema=False`, in eval mode on `device`."""
    ckpt, file = _checkpoint(path)
    config = ckpt["config"]
    if config.get("task") != "classifier":
        raise CheckpointError(f"{file} is not a classifier run (its config has no `task: "
                              "classifier`): train one with experiment=classifier_digits")
    sde, model = _sde_and_network(ckpt, file, ema=ema, device=resolve_device(device))
    return Classifier(sde=sde, model=model, config=config, data=config["data"],
                      step=int(ckpt["step"]), path=file, ema=ema)


def _check_score_run(config: dict, file) -> None:
    if config.get("task") == "classifier":
        raise CheckpointError(f"{file} is a noise-conditional classifier (task: classifier), not "
                              "a score model: guide a score run with it, run=SCORE_RUN "
                              f"classifier={file} label=C (sde.runs.load_classifier)")
    if config.get("task") == "autoencoder":
        raise CheckpointError(f"{file} is an autoencoder run (task: autoencoder), not a score "
                              "model: train a latent score model on it with experiment=ldm_digits"
                              f" autoencoder={file}, or load it with sde.runs.load_autoencoder")


def load_autoencoder(path, *, ema: bool = True, device=None) -> tuple[nn.Module, Path]:
    """(autoencoder in eval mode, its file): the EMA (or raw) weights of an autoencoder run
    (`task: autoencoder`, its directory or checkpoint), or a diffusers VAE folder
    (config.json + diffusion_pytorch_model.safetensors, `sde.models.sd_vae.load_sd_vae`)."""
    path = Path(path).expanduser()
    device = resolve_device(device)
    if path.is_dir() and (path / "config.json").is_file():
        from sde.models.sd_vae import load_sd_vae

        return load_sd_vae(path, device=device), path.resolve()
    file = latest_checkpoint(path) if path.exists() else None
    if file is None:
        raise CheckpointError(f"no autoencoder at {path}: pass an ae_* run directory (trained "
                              "with experiment=ae_digits / ae_cifar), its checkpoint file, or a "
                              "diffusers VAE folder")
    ckpt = load_checkpoint(file)
    if ckpt["config"].get("task") != "autoencoder":
        raise CheckpointError(f"{file} is not an autoencoder run (its config has no "
                              "`task: autoencoder`): pass an ae_* run")
    weights = ckpt["ema"] if ema else ckpt["model"]
    check_finite_weights(weights, file, which="EMA" if ema else "raw")
    try:
        model = _instantiate(ckpt["config"]["model"])
        model.load_state_dict(weights)
    except (KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{file} does not match this codebase's autoencoder "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return model.to(device).eval().requires_grad_(False), file.resolve()


def latent_space_of(latent: dict, file, *, device=None):
    """The frozen `LatentSpace` a latent run (checkpoint `file`) was trained in, from its config's
    `latent` section: the autoencoder it names and the stored scale and shift factors."""
    from sde.latent.data import weights_fingerprint
    from sde.latent.space import LatentSpace

    try:
        autoencoder, _ = load_autoencoder(latent["autoencoder"], device=device)
    except (CheckpointError, FileNotFoundError) as e:
        raise CheckpointError(f"{file} is a latent run whose autoencoder is unavailable ({e}); "
                              "put the autoencoder run back at that path") from None
    stored = latent.get("autoencoder_weights")
    if stored is not None and weights_fingerprint(autoencoder) != stored:
        raise CheckpointError(f"{file} was trained on other autoencoder weights than those now at "
                              f"{latent['autoencoder']}: restore that checkpoint")
    space = LatentSpace(autoencoder, scale_factor=latent["scale_factor"],
                        shift_factor=latent.get("shift_factor", 0.0),
                        sample_posterior=latent.get("sample_posterior", True))
    return space.to(resolve_device(device))

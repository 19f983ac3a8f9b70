"""Write a score_sde_pytorch checkpoint as a run of this codebase.

    run_config(...)   our resolved config: the experiment composed with Hydra, then the
                      sections the score_sde config decides (`sde.convert.translate`)
    convert_run(...)  read the source (weights_only), map raw and EMA weights
                      (`sde.convert.score_sde`), write DIR/config.yaml and
                      DIR/checkpoints/ckpt_<step>.pt with `sde.runs.checkpoint.save_checkpoint`

The run is what `sde.load_run(DIR)`, `python -m sde.sample run=DIR` and
`python -m sde.evaluate run=DIR` read; EMA weights are the default there, the raw ones are
kept under "model". The optimiser state is a fresh one of our optimiser (score_sde's Adam
moments are not carried over), so `sde.train` can fine-tune from the converted weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from sde.convert.released import Released, load_config
from sde.convert.score_sde import convert_checkpoint
from sde.convert.translate import translate
from sde.runs.paths import CONFIG_DIR, experiment_file

# sections replaced whole by the translation; the others are updated key by key
_REPLACED = ("sde", "score", "loss")


def compose_experiment(experiment: str, overrides: Sequence[str] = ()) -> dict:
    """conf/train.yaml with `experiment=NAME` and `overrides`, resolved, as plain containers."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    if not experiment_file(experiment).is_file():
        raise ValueError(f"conf/experiment/{experiment}.yaml does not exist: this codebase has "
                         f"no experiment {experiment!r} to convert into")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            cfg = compose("train", [f"experiment={experiment}", "logger=none", *overrides])
        except HydraException as e:
            raise ValueError(f"cannot compose experiment={experiment} with {list(overrides)}: "
                             f"{e}") from None
    return OmegaConf.to_container(cfg, resolve=True)


def _model_section(composed: Mapping, translated: Mapping) -> dict:
    """The translated network, keeping the experiment's other keyword arguments (num_classes,
    num_groups) when it is the same class; every key must be an argument of that class."""
    from hydra.utils import get_class

    same = composed.get("_target_") == translated["_target_"]
    model = {**composed, **translated} if same else dict(translated)
    params = inspect.signature(get_class(model["_target_"]).__init__).parameters
    unknown = [k for k in model if k != "_target_" and k not in params]
    if unknown:
        raise ValueError(f"model keys {unknown} are not arguments of {model['_target_']}")
    return model


def merge_sections(composed: Mapping, translated: Mapping) -> dict:
    """The composed experiment with the translated sections: sde, score and loss replaced, the
    network as `_model_section`, data / trainer / sampler updated key by key."""
    config = dict(composed)
    for section, values in translated.items():
        if section == "model":
            config["model"] = _model_section(composed.get("model", {}), values)
        elif section in _REPLACED:
            config[section] = dict(values)
        else:
            config[section] = {**composed.get(section, {}), **values}
    if config["data"].get("name") == "folder" and config["data"].get("root") in (None, "???"):
        config["data"]["root"] = None  # the user's image folder: evaluate with data.root=DIR
    return config


def _data_source(overrides: Sequence[str]) -> str | None:
    """The data source a `data=NAME` override picks, if any."""
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
    return names[-1] if names else None


def _is_dotted(override: str) -> bool:
    """A `[+]section.key=value` override (not a group choice `group=option`, not `~key`)."""
    return "." in override.split("=", 1)[0] and not override.startswith("~")


def _has_key(cfg, key: str) -> bool:
    """Whether dotted `key` exists in `cfg` (its value may be None)."""
    from omegaconf import OmegaConf

    head, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, head) if head else cfg
    return parent is not None and last in parent


def apply_overrides(config: Mapping, overrides: Sequence[str]) -> dict:
    """`config` with the dotted `key=value` overrides set last, so that they win over the
    translation (group choices like `data=folder` and `~key` act at composition)."""
    from omegaconf import OmegaConf

    base = OmegaConf.create(dict(config))
    for o in overrides:
        key = o.split("=", 1)[0]
        if _is_dotted(o) and not o.startswith("+") and not _has_key(base, key):
            raise ValueError(f"{o}: the converted config has no key {key!r} (check the spelling; "
                             f"+{o} adds a new key)")
    dotted = [o.lstrip("+") for o in overrides if _is_dotted(o)]
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotted))
    return OmegaConf.to_container(merged, resolve=True)


def run_config(score_sde_config: Mapping, base: Released, overrides: Sequence[str] = (),
               *, source: Mapping | None = None) -> dict:
    """Our resolved config for a score_sde config composed on `base`'s experiment.

    `overrides` (Hydra syntax) win: `data=NAME` picks another data source for the same model
    (shape and scaling stay the model's), dotted keys are set last."""
    translated = translate(score_sde_config)
    source_name = _data_source(overrides) or translated["data"]["name"]
    translated["data"]["name"] = source_name
    if source_name == "folder":  # pictures resized to the model's size
        channels, size = translated["data"]["shape"][:2]
        translated["data"].update(size=size, channels=channels)
    groups = [o for o in overrides if not o.startswith("data=") and not _is_dotted(o)]
    composed = compose_experiment(base.experiment,
                                  [f"data={source_name}", *base.overrides, *groups])
    merged = merge_sections(composed, translated)
    config = apply_overrides(merged, overrides)
    if config["model"] != merged["model"]:
        raise ValueError("model.* overrides would not fit the converted weights: the network "
                         "comes from the score_sde config (change it there)")
    if source is not None:
        config["converted_from"] = dict(source)
    return config


def fresh_optimizer_state(model: torch.nn.Module, config: Mapping) -> dict:
    """The state dict of a new optimiser of the run's settings, as `sde.train` builds it."""
    from sde.training.loop import TrainSettings, make_optimizer

    settings = TrainSettings.from_sections(trainer=config["trainer"], optim=config["optim"],
                                           seed=config.get("seed", 0))
    return make_optimizer(model.parameters(), settings, torch.device("cpu")).state_dict()


def read_source(path) -> dict:
    """A score_sde checkpoint read with weights_only=True; a ValueError if it is not one (an
    `UnsafeFileError` naming the blocked global if it holds code)."""
    from sde.serialization import UnsafeFileError, load_weights_only

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no score_sde checkpoint at {path}")
    try:
        ckpt = load_weights_only(path, what="score_sde checkpoint")
    except UnsafeFileError:
        raise
    except Exception as e:  # a pickle needing more than tensors, or a corrupt file
        raise ValueError(f"cannot read {path} with torch.load(weights_only=True): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a score_sde checkpoint: expected a dict with 'model', "
                         "'ema' (shadow_params) and 'step'")
    if not isinstance(ckpt.get("ema"), Mapping) or "shadow_params" not in ckpt["ema"]:
        raise ValueError(f"{path} has no EMA weights (ema.shadow_params); was it written by "
                         "score_sde's run_lib (save_checkpoint)?")
    return ckpt


def convert_run(src, config: str, out, overrides: Sequence[str] = (), *, keep: int = 1) -> Path:
    """Convert score_sde checkpoint `src` under `config` (a released name or a JSON file) into
    run directory `out`; returns the checkpoint path."""
    from omegaconf import OmegaConf

    from sde.runs.checkpoint import rng_state, save_checkpoint
    from sde.runs.files import write_text

    out = Path(out)
    if any((out / "checkpoints").glob("ckpt_*.pt")):
        raise ValueError(f"out={out} already holds checkpoints; convert into a new directory")
    score_sde_config, base = load_config(config)
    ckpt = read_source(src)
    try:
        converted = convert_checkpoint(ckpt, score_sde_config)
    except ValueError as e:
        raise ValueError(f"{e} (converting {src} under config={config}: is this the config "
                         "the checkpoint was trained with?)") from None
    source = {"codebase": "yang-song/score_sde_pytorch", "checkpoint": str(Path(src).resolve()),
              "config": str(config), "step": converted["step"]}
    run = run_config(score_sde_config, base, overrides, source=source)
    write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(run)))
    state = {"model": converted["state_dict"], "ema": converted["ema_state_dict"],
             "optimizer": fresh_optimizer_state(converted["model"], run),
             "rng": rng_state(), "config": run}
    return save_checkpoint(state, out, converted["step"], keep=keep)

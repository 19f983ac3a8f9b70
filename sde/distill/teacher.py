"""Teachers: a trained run (`sde.load_run`) or the exact score of an oracle Gaussian mixture.

A teacher is what every distillation needs from it: the SDE, a batched denoiser x0 = D(x, t),
where its training data comes from, and (for a trained run) the network and its config, which
the student copies. The oracle teacher has no network: its data are exact mixture samples and
its denoiser is exact (Tweedie on the closed-form score), so distillation error is measured
against the truth.

Spec strings (`teacher=` on the command line):
    oracle:ring                     GaussianMixture.ring() under VPSDE()
    oracle:ring:k=4,radius=2,std=0.1
    oracle:random:k=5,dim=2,seed=0  GaussianMixture.random(k, (dim,), seed=seed)
    oracle:gaussian:dim=2,mean=1,std=0.5
    PATH                            a run directory or checkpoint (sde.load_run)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from sde.data import step_generator
from sde.oracle import GaussianMixture

ORACLE_KINDS = ("ring", "random", "gaussian")


@dataclass
class Teacher:
    """sde, denoiser(x, t) -> x0, data (has `.batch(step, n, seed=, rank=, world=)` and `.shape`),
    the network (None for an oracle) and the run config sections a student inherits."""

    sde: object
    denoiser: object
    data: object
    net: nn.Module | None = None
    config: dict = field(default_factory=dict)
    spec: str = ""
    mixture: GaussianMixture | None = None

    def student_net(self, default: dict | None = None, prediction: str | None = None
                    ) -> tuple[nn.Module, dict, dict]:
        """(a trainable copy of the teacher's network, its model config, its score options); for
        an oracle teacher a fresh network built from `default` (a model config), predicting
        `prediction`: x0 (default) or v (Salimans & Ho 2022, Sec. 4)."""
        if self.net is not None:
            score = dict(self.config.get("score", {}))
            own = score.get("prediction", "eps")
            if prediction not in (None, own):
                raise ValueError(f"the student starts from the teacher's weights, so it predicts "
                                 f"what the teacher does ({own}), not {prediction}: leave "
                                 "prediction unset, or train the teacher with "
                                 f"score.prediction={prediction}")
            return copy.deepcopy(self.net).train().requires_grad_(True), self.config["model"], score
        from hydra.utils import instantiate

        if default is None:
            raise ValueError("an oracle teacher has no network: give the student's model config")
        if prediction not in (None, "x0", "v"):
            raise ValueError(f"an oracle teacher's student predicts x0 or v, not {prediction!r}")
        score = {"prediction": prediction or "x0", "time_input": "t", "time_scale": 999.0}
        return instantiate(default), dict(default), score


class OracleData:
    """Exact samples of a mixture as a training set: batch `step` of `rank` from its own seed."""

    STREAM = 6

    def __init__(self, mixture: GaussianMixture):
        self.mixture, self.shape = mixture, mixture.event_shape

    def batch(self, step: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        g = step_generator(seed, rank, step, self.STREAM)
        return self.mixture.sample(batch_size, g)


def _parse_options(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise ValueError(f"oracle option {item!r} must be key=value (e.g. oracle:ring:k=4)")
        key, value = item.split("=", 1)
        out[key.strip()] = float(value) if any(c in value for c in ".e") else int(value)
    return out


def parse_oracle(spec: str) -> GaussianMixture:
    """The mixture named by `oracle:KIND[:key=value,...]` (see the module docstring)."""
    parts = spec.split(":", 2)
    kind = parts[1] if len(parts) > 1 else ""
    opts = _parse_options(parts[2] if len(parts) > 2 else "")
    if kind not in ORACLE_KINDS:
        raise ValueError(f"unknown oracle teacher {spec!r}; use oracle:KIND[:key=value,...] with "
                         f"KIND one of {list(ORACLE_KINDS)}")
    try:
        if kind == "ring":
            return GaussianMixture.ring(**opts)
        if kind == "random":
            k, dim = opts.pop("k", 5), opts.pop("dim", 2)
            return GaussianMixture.random(int(k), (int(dim),), **opts)
        dim = int(opts.pop("dim", 2))
        mean, std = float(opts.pop("mean", 0.0)), float(opts.pop("std", 1.0))
        if opts:
            raise TypeError(f"unexpected options {sorted(opts)}")
        return GaussianMixture(torch.full((1, dim), mean), std)
    except TypeError as e:
        raise ValueError(f"bad options in oracle teacher {spec!r}: {e}") from None


def oracle_teacher(mixture: GaussianMixture, sde=None, *, spec: str = "") -> Teacher:
    """The exact teacher of `mixture` under `sde` (default VPSDE()): Tweedie on its true score."""
    from sde.sdes import VPSDE

    sde = sde or VPSDE()
    params = {"means": mixture.means.tolist(), "stds": mixture.stds.tolist(),
              "weights": mixture.weights.tolist()}
    config = {"sde": {"_target_": f"{type(sde).__module__}.{type(sde).__name__}", **sde.hparams()},
              "data": {"name": "oracle", "mixture": params, "shape": list(mixture.event_shape),
                       "levels": None, "centered": False}}
    return Teacher(sde=sde, denoiser=mixture.denoiser(sde), data=OracleData(mixture),
                   config=config, spec=spec or "oracle", mixture=mixture)


def run_data(data_cfg: dict, path):
    """The training set of a run's stored `data` section (its `fingerprint` is checked, not
    passed on: a changed source is logged, the distillation goes on)."""
    import logging

    from sde.data import Dataset

    options = {k: v for k, v in data_cfg.items() if k != "fingerprint"}
    data = Dataset(**options)
    stored = data_cfg.get("fingerprint")
    if stored is not None and getattr(data, "fingerprint", stored) != stored:
        logging.getLogger("sde.distill").warning(
            "the data of teacher %s changed since it was trained (fingerprint %s, now %s)",
            path, stored, data.fingerprint)
    return data


def run_teacher(path, *, data=None, device=None) -> Teacher:
    """A trained run as teacher (EMA weights, frozen); `data` defaults to its training set."""
    from sde.models import get_denoiser_fn
    from sde.run import load_run

    run = load_run(path, device=device)
    if run.latent is not None:
        raise ValueError(f"{path} is a latent run (its network denoises an autoencoder's "
                         "latents): distilling latent runs is not supported; use a pixel-space "
                         "run (e.g. experiment=vp_digits) as the teacher")
    if data is None:
        data = run_data(run.config["data"], path)
    return Teacher(sde=run.sde, denoiser=get_denoiser_fn(run.sde, run.score_fn), data=data,
                   net=run.model, config=run.config, spec=str(path))


def load_teacher(spec: str, *, sde=None, device=None) -> Teacher:
    """`oracle:...` -> `oracle_teacher`; anything else is a run directory or checkpoint."""
    if str(spec).startswith("oracle"):
        return oracle_teacher(parse_oracle(str(spec)), sde, spec=str(spec))
    return run_teacher(spec, device=device)

"""Score-based generative modelling through SDEs (Song et al., ICLR 2021).

`from sde import VPSDE, SubVPSDE, VESDE, sampling, load_run`: the SDE library, the samplers
(`sde.sampling`), and trained runs (`sde.load_run`). See ../shared/API.md for the contract.
"""

from sde.sdes import SDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "load_run", "sampling", "likelihood"]


def load_run(path, *, ema: bool = True, device=None):
    """A trained (or converted) run: `.sde`, `.model`, `.score_fn`, `.config`, `.scaler`,
    `.inverse_scaler` (see `sde.runs.load_run`)."""
    from sde.runs.load import load_run as _load_run

    return _load_run(path, ema=ema, device=device)


def __getattr__(name):
    if name in ("sampling", "likelihood", "models", "oracle", "runs"):
        import importlib

        return importlib.import_module(f"sde.{name}")
    raise AttributeError(f"module 'sde' has no attribute {name!r}")

"""Score-based generative modelling through SDEs (Song et al., ICLR 2021)."""

from sde.sdes import SDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE"]

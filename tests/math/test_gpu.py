"""The samplers and the likelihood run on CUDA, on the tensor's device, without dtype changes."""

from __future__ import annotations

import pytest
import torch

from sde import VESDE, VPSDE, sampling
from sde.likelihood import log_likelihood
from sde.oracle import GaussianMixture

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samplers_and_likelihood_on_cuda(dtype):
    mix = GaussianMixture.ring(4)
    for sde in (VPSDE(N=50), VESDE(N=50)):
        score = mix.score_fn(sde)
        g = torch.Generator("cuda").manual_seed(0)
        x, _ = sampling.pc_sample(sde, score, (64, 2), predictor="ancestral_sampling",
                                  generator=g, device="cuda", dtype=dtype)
        assert x.device.type == "cuda" and x.dtype == dtype and torch.isfinite(x).all()
        x, _ = sampling.ode_sample(sde, score, (64, 2), generator=g, device="cuda", dtype=dtype)
        assert x.device.type == "cuda" and x.dtype == dtype and torch.isfinite(x).all()
        logp, z, _ = log_likelihood(sde, score, x, generator=g)
        assert logp.device.type == z.device.type == "cuda" and logp.dtype == dtype

"""Every controllable-generation method on CUDA: device placement, known entries, finiteness."""

import pytest
import torch

from sde import VESDE, VPSDE, sampling
from sde.oracle import GaussianMixture

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("sde", [VPSDE(N=50), VESDE(N=50)], ids=["VP", "VE"])
@pytest.mark.parametrize("method", ["replacement", "repaint", "dps", "smc"])
def test_inpaint_and_colorize_on_cuda(method, sde):
    mix = GaussianMixture.random(3, (3, 4, 4), seed=0)
    g = torch.Generator("cuda").manual_seed(0)
    y = mix.sample(4, g, device="cuda")
    mask = (torch.rand(y.shape, generator=g, device="cuda") < 0.5).float()
    options = {"corrector": "none"} if method == "smc" else {}
    x, nfe = sampling.inpaint(sde, mix.score_fn(sde), y, mask, method=method, generator=g,
                              **options)
    assert x.device.type == "cuda" and torch.isfinite(x).all() and nfe > 0
    assert torch.equal(x[mask.bool()], y[mask.bool()])
    gray = y.mean(1, keepdim=True)
    colour, _ = sampling.colorize(sde, mix.score_fn(sde), gray, method=method, generator=g,
                                  **options)
    assert colour.device.type == "cuda" and colour.shape == y.shape
    assert (colour.mean(1, keepdim=True) - gray).abs().max() < 1e-5
    post = mix.condition(mask[0].cpu(), y[0].cpu())
    assert torch.isfinite(post.score(x[:1], torch.full((1,), 0.5, device="cuda"), sde)).all()

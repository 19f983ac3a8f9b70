"""Building blocks against closed forms and direct reference computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import convolve2d

from sde.models.layers import (
    AttnBlock,
    Downsample,
    FIRConv2d,
    GaussianFourierProjection,
    GroupNorm32,
    Upsample,
    fir_downsample_2d,
    fir_upsample_2d,
    setup_kernel,
    timestep_embedding,
)

KERNELS = [(1, 3, 3, 1), (1, 1), (1, 2, 1), (1, 4, 6, 4, 1)]


@pytest.mark.parametrize("kernel", KERNELS)
def test_fir_resampling_preserves_a_constant_image(kernel):
    k = setup_kernel(kernel)
    x = torch.full((1, 2, 16, 16), 3.25, dtype=torch.float64)
    up, down = fir_upsample_2d(x, k.double()), fir_downsample_2d(x, k.double())
    assert up.shape == (1, 2, 32, 32) and down.shape == (1, 2, 8, 8)
    m = len(kernel)  # away from the zero-padded border
    torch.testing.assert_close(up[..., m:-m, m:-m], torch.full_like(up[..., m:-m, m:-m], 3.25))
    torch.testing.assert_close(down[..., m:-m, m:-m], torch.full_like(down[..., m:-m, m:-m], 3.25))


def _upfirdn_reference(x: np.ndarray, kernel, up: int, down: int) -> np.ndarray:
    """upsample_2d / downsample_2d of StyleGAN2 by scipy's full 2-D convolution of one image."""
    k2 = np.outer(kernel, kernel).astype(np.float64)
    k2 /= k2.sum()
    f, kh = (up if up > 1 else down), k2.shape[0]
    p = kh - f
    if up > 1:
        z = np.zeros((x.shape[0] * up, x.shape[1] * up))
        z[::up, ::up] = x
        full = convolve2d(z, k2 * up**2, mode="full")
        pad0 = (p + 1) // 2 + f - 1
        start = kh - 1 - pad0
        return full[start:start + z.shape[0], start:start + z.shape[1]]
    full = convolve2d(x, k2, mode="full")
    start = kh - 1 - (p + 1) // 2
    n = x.shape[0] // down
    return full[start::down, start::down][:n, :n]


@pytest.mark.parametrize("kernel", KERNELS)
def test_fir_resampling_matches_a_direct_convolution(kernel):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k = setup_kernel(kernel).double()
    up, down = fir_upsample_2d(x, k), fir_downsample_2d(x, k)
    for b in range(2):
        for c in range(3):
            img = x[b, c].numpy()
            np.testing.assert_allclose(up[b, c].numpy(), _upfirdn_reference(img, kernel, 2, 1),
                                       atol=1e-12)
            np.testing.assert_allclose(down[b, c].numpy(), _upfirdn_reference(img, kernel, 1, 2),
                                       atol=1e-12)


def test_fused_fir_convolutions_equal_resample_then_conv_inside_the_image():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g)
    k = setup_kernel((1, 3, 3, 1))
    up, down = FIRConv2d(3, 5, up=True), FIRConv2d(3, 5, down=True)
    with torch.no_grad():
        up.bias.normal_(generator=g)
        down.bias.normal_(generator=g)
        a = up(x)
        b = F.conv2d(fir_upsample_2d(x, k), up.weight, up.bias, padding=1)
        torch.testing.assert_close(a[..., 2:-2, 2:-2], b[..., 2:-2, 2:-2], atol=1e-5, rtol=1e-5)
        a = down(x)
        b = fir_downsample_2d(F.conv2d(x, down.weight, down.bias, padding=1), k)
        torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)
    assert a.shape == (2, 5, 4, 4) and up(x).shape == (2, 5, 16, 16)


@pytest.mark.parametrize("fir", [False, True])
@pytest.mark.parametrize("with_conv", [False, True])
def test_resamplers_halve_and_double(fir, with_conv):
    x = torch.randn(2, 4, 8, 8)
    assert Upsample(4, with_conv=with_conv, fir=fir)(x).shape == (2, 4, 16, 16)
    assert Downsample(4, with_conv=with_conv, fir=fir)(x).shape == (2, 4, 4, 4)
    if not with_conv and not fir:  # nearest up then 2x2 mean is the identity
        torch.testing.assert_close(Downsample(4)(Upsample(4)(x)), x)


def test_timestep_embedding_closed_form():
    cond = torch.tensor([0.0, 1.0, 999.0])
    emb = timestep_embedding(cond, 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 3)
    expected = torch.cat([torch.sin(cond[:, None] * freqs), torch.cos(cond[:, None] * freqs)], 1)
    torch.testing.assert_close(emb, expected)
    assert timestep_embedding(cond, 9).shape == (3, 9)  # odd: zero padded
    with pytest.raises(ValueError, match="shaped"):
        timestep_embedding(cond[:, None], 8)


def test_fourier_features_are_frozen():
    proj = GaussianFourierProjection(16, scale=16.0)
    assert list(proj.parameters()) == [] and "W" in proj.state_dict()
    w0 = proj.W.clone()
    c = torch.rand(5)
    out = proj(c)
    torch.testing.assert_close(out[:, :16], torch.sin(c[:, None] * w0 * 2 * math.pi))
    torch.testing.assert_close(out[:, 16:], torch.cos(c[:, None] * w0 * 2 * math.pi))


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    block = AttnBlock(8, init_scale=1.0)
    x = torch.randn(2, 8, 4, 4)
    h = block.norm(x)
    q, k, v = block.qkv(h).chunk(3, dim=1)
    w = torch.einsum("bchw,bcij->bhwij", q, k) / math.sqrt(8)
    w = torch.softmax(w.reshape(2, 4, 4, 16), -1).reshape(2, 4, 4, 4, 4)
    expected = x + block.proj(torch.einsum("bhwij,bcij->bchw", w, v))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_group_norm_runs_in_float32_under_bf16_autocast():
    norm = GroupNorm32(2, 8, eps=1e-6)
    x = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm(x.bfloat16().float()), atol=1e-2, rtol=1e-2)

"""Building blocks of the score networks: time embeddings, residual blocks, attention, FIR
resampling and combiners, computing exactly what score_sde_pytorch's layers compute."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sde.utils import append_dims

# --------------------------------------------------------------------------------------------
# Time embeddings
# --------------------------------------------------------------------------------------------


def timestep_embedding(cond: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of a `(B,)` float tensor (Transformer / DDPM), `(B, dim)` in float32:
    [sin(c w_k), cos(c w_k)] with w_k = max_positions^(-k / (dim/2 - 1))."""
    if cond.ndim != 1:
        raise ValueError(f"cond must be shaped (B,), got {tuple(cond.shape)}")
    half = dim // 2
    rate = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=cond.device) * -rate)
    args = cond.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 == 1 else emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin(2 pi W c), cos(2 pi W c)] with frozen W ~ N(0, scale^2)
    (Tancik et al. 2020; NCSN++). W is a buffer: never trained, not in `parameters()`."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.register_buffer("W", torch.randn(embedding_size) * scale)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        proj = cond[:, None] * self.W[None, :] * 2 * math.pi  # (B, E)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)  # (B, 2E)


# --------------------------------------------------------------------------------------------
# Initialisation, activations, normalisation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM's initialiser: variance scaling, fan_avg, uniform (scale 0 means 1e-10), in place."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel: int = 3, *, stride: int = 1, padding: int | None = None,
           init_scale: float = 1.0, bias: bool = True) -> nn.Conv2d:
    """A convolution with DDPM initialisation and zero bias ('same' padding by default)."""
    padding = kernel // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias)
    default_init_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A dense layer with DDPM initialisation and zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    default_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU,
               "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2)}


def get_act(name: str) -> nn.Module:
    """Activation by score_sde's name (`swish`, `elu`, `relu`, `lrelu`)."""
    if name.lower() not in ACTIVATIONS:
        raise ValueError(f"unknown nonlinearity {name!r}; choose one of {list(ACTIVATIONS)}")
    return ACTIVATIONS[name.lower()]()


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the autocast dtype, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                               self.eps)
        return out.to(x.dtype)


def group_norm(channels: int, num_groups: int | None = None) -> GroupNorm32:
    """score_sde's GroupNorm: min(C // 4, 32) groups (NCSN++/DDPM++) or a fixed count (DDPM)."""
    groups = min(channels // 4, 32) if num_groups is None else num_groups
    return GroupNorm32(num_groups=groups, num_channels=channels, eps=1e-6)


# --------------------------------------------------------------------------------------------
# FIR resampling (StyleGAN2's upfirdn2d) in plain PyTorch convolutions
# --------------------------------------------------------------------------------------------


def setup_kernel(kernel) -> torch.Tensor:
    """A 2-D FIR kernel from a 1-D (separable, outer product) or 2-D one, normalised to sum 1."""
    k = torch.as_tensor(kernel, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"fir_kernel must be 1-D or square 2-D, got shape {tuple(k.shape)}")
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), convolve with `kernel`, keep every
    `down`-th pixel: StyleGAN2's upfirdn2d as a depthwise (transposed) convolution. (B, C, H, W)."""
    if up > 1 and down > 1:
        raise ValueError("upfirdn2d: upsampling and downsampling at once is not supported")
    if up > 1:
        return _upfir_transposed(x, kernel, up, pad)
    C = x.shape[1]
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].expand(C, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=C)


def _upfir_transposed(x: torch.Tensor, kernel: torch.Tensor, up: int, pad) -> torch.Tensor:
    """upfirdn2d with down = 1 without materialising the zero-inserted image: a strided
    transposed depthwise convolution is the full convolution of that image with `kernel`;
    then crop (or zero-pad) it to the window upfirdn2d's padding selects."""
    _, C, H, W = x.shape
    kh = kernel.shape[0]
    weight = kernel.to(x.dtype)[None, None].expand(C, 1, *kernel.shape)
    full = F.conv_transpose2d(x, weight, stride=up, groups=C)  # (B, C, (H-1) up + kh, ...)
    start, extra = kh - 1 - pad[0], pad[0] + pad[1] - kh + 1  # output: n up + extra pixels
    end_h = start + H * up + extra - full.shape[-2]
    end_w = start + W * up + extra - full.shape[-1]
    return F.pad(full, (-start, end_w, -start, end_h))  # negative pads crop


def fir_upsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample (B, C, H, W) -> (B, C, fH, fW) with a normalised FIR kernel (gain factor^2)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Downsample (B, C, H, W) -> (B, C, H/f, W/f) with a normalised FIR kernel."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling (each pixel repeated factor x factor)."""
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Mean over factor x factor blocks."""
    return F.avg_pool2d(x, factor, stride=factor)


class FIRConv2d(nn.Module):
    """3x3 convolution fused with FIR up- or downsampling (StyleGAN2's upsample_conv_2d and
    conv_downsample_2d): weight (out, in, k, k) and bias (out,)."""

    def __init__(self, in_ch: int, out_ch: int, *, up: bool = False, down: bool = False,
                 fir_kernel=(1, 3, 3, 1), kernel: int = 3):
        super().__init__()
        if up == down:
            raise ValueError("FIRConv2d needs exactly one of up=True or down=True")
        self.up = up
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, kernel, kernel)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("fir", setup_kernel(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, kw, f = self.fir, self.weight.shape[-1], 2
        if self.up:  # transposed conv with the flipped kernel, then the FIR filter
            p = (k.shape[0] - f) - (kw - 1)
            w = self.weight.flip(2, 3).transpose(0, 1)  # (in, out, k, k)
            x = F.conv_transpose2d(x, w, stride=f)
            x = upfirdn2d(x, k * f**2, pad=((p + 1) // 2 + f - 1, p // 2 + 1))
        else:  # FIR filter, then a strided conv
            p = (k.shape[0] - f) + (kw - 1)
            x = F.conv2d(upfirdn2d(x, k, pad=((p + 1) // 2, p // 2)), self.weight, stride=f)
        return x + append_channel_dims(self.bias)


def append_channel_dims(v: torch.Tensor) -> torch.Tensor:
    """A per-channel (C,) vector as (1, C, 1, 1)."""
    return v.reshape(1, -1, 1, 1)


class Upsample(nn.Module):
    """x2 upsampling: nearest (+ 3x3 conv) or FIR (+ fused conv); `out_ch` for pyramids."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv: bool = False,
                 fir: bool = False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        self.fir, self.with_conv = fir, with_conv
        if with_conv:
            self.conv = (FIRConv2d(in_ch, out_ch, up=True, fir_kernel=fir_kernel) if fir
                         else conv2d(in_ch, out_ch, 3))
        self.register_buffer("fir_kernel", setup_kernel(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor, temb=None) -> torch.Tensor:
        if self.fir:
            return self.conv(x) if self.with_conv else fir_upsample_2d(x, self.fir_kernel)
        h = naive_upsample_2d(x)
        return self.conv(h) if self.with_conv else h


class Downsample(nn.Module):
    """x2 downsampling: 'SAME'-padded stride-2 3x3 conv or 2x2 average, or FIR (+ fused conv)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv: bool = False,
                 fir: bool = False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        self.fir, self.with_conv = fir, with_conv
        if with_conv:
            self.conv = (FIRConv2d(in_ch, out_ch, down=True, fir_kernel=fir_kernel) if fir
                         else conv2d(in_ch, out_ch, 3, stride=2, padding=0))
        self.register_buffer("fir_kernel", setup_kernel(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor, temb=None) -> torch.Tensor:
        if self.fir:
            return self.conv(x) if self.with_conv else fir_downsample_2d(x, self.fir_kernel)
        if self.with_conv:  # TensorFlow 'SAME' padding of a stride-2 conv: one pixel right/bottom
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return naive_downsample_2d(x)


# --------------------------------------------------------------------------------------------
# Residual blocks, attention, combiners
# --------------------------------------------------------------------------------------------


class ResnetBlock(nn.Module):
    """Residual block of DDPM (`resample=None`) or BigGAN (`resample='up'|'down'`), with the time
    embedding added as a per-channel bias after the first conv, and (x + h) / sqrt(2) when
    `skip_rescale`. The shortcut is a 1x1 conv when the shape changes (`skip_init` 0.1 for
    DDPM's NIN, 1 for BigGAN's conv1x1)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, act: nn.Module,
                 temb_dim: int | None = None, dropout: float = 0.1, skip_rescale: bool = False,
                 init_scale: float = 0.0, resample: str | None = None, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1), num_groups: int | None = None, skip_init: float = 0.1):
        super().__init__()
        out_ch = out_ch or in_ch
        self.act, self.skip_rescale, self.resample, self.fir = act, skip_rescale, resample, fir
        self.norm0 = group_norm(in_ch, num_groups)
        self.conv0 = conv2d(in_ch, out_ch, 3)
        self.dense = linear(temb_dim, out_ch) if temb_dim is not None else None
        self.norm1 = group_norm(out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_ch, out_ch, 3, init_scale=init_scale)
        shortcut = in_ch != out_ch or resample is not None
        self.skip = conv2d(in_ch, out_ch, 1, init_scale=skip_init) if shortcut else None
        self.register_buffer("fir_kernel", setup_kernel(fir_kernel), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return fir_upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.resample == "down":
            return fir_downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(self.act(self.norm0(x)))  # (B, C_in, H', W')
        h = self.conv0(h)
        if temb is not None and self.dense is not None:
            h = h + append_dims(self.dense(self.act(temb)), h.ndim)  # (B, C_out, 1, 1) bias
        h = self.conv1(self.dropout(self.act(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(self._resample(x))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H x W positions (DDPM's AttnBlock), through
    `F.scaled_dot_product_attention`; q, k, v from one fused 1x1 conv."""

    def __init__(self, channels: int, *, skip_rescale: bool = False, init_scale: float = 0.0,
                 num_groups: int | None = None):
        super().__init__()
        self.skip_rescale = skip_rescale
        self.norm = group_norm(channels, num_groups)
        self.qkv = conv2d(channels, 3 * channels, 1, init_scale=0.1)
        self.proj = conv2d(channels, channels, 1, init_scale=init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2)  # (B, 3, HW, C)
        q, k, v = qkv.unbind(1)  # (B, HW, C) each
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, HW, C)
        h = self.proj(h.transpose(1, 2).reshape(B, C, H, W))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """Merge the input pyramid into the features: 1x1 conv, then concatenate or sum."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine must be 'cat' or 'sum', got {method!r}")
        self.method = method
        self.conv = conv2d(dim1, dim2, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y

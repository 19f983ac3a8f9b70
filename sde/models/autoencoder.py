"""LDM's KL-regularised autoencoder (Rombach et al. 2022, Sec. 3.1 and App. G).

An image `x` (B, C, H, W) is encoded into a diagonal Gaussian posterior q(z | x) over latents
`z` (B, z_channels, H / f, W / f), f = 2^(len(ch_mult) - 1), and decoded back. The layout and
the parameter names follow CompVis/latent-diffusion (`ldm/modules/diffusionmodules/model.py`):
ResNet blocks, attention in the middle block, GroupNorm(eps=1e-6) and SiLU, downsampling by a
stride-2 convolution after a (0, 1, 0, 1) pad, nearest upsampling followed by a convolution.
Stable Diffusion's VAE is this network with ch=128, ch_mult=(1, 2, 4, 4), z_channels=4
(`sde.models.sd_vae.load_sd_vae` reads it from a diffusers folder).

The patch discriminator (`PatchDiscriminator`) is taming-transformers' NLayerDiscriminator
(Isola et al. 2017, PatchGAN); its hinge loss lives in `sde.latent.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sde.utils import randn_like


def _norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm as LDM (eps 1e-6); `num_groups` must divide `channels`."""
    if channels % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide every channel count; "
                         f"{channels} is not a multiple (lower num_groups)")
    return nn.GroupNorm(num_groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """LDM's ResnetBlock without time embedding: x + conv(silu(norm(conv(silu(norm(x))))))."""

    def __init__(self, in_channels: int, out_channels: int, *, num_groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                             if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """LDM's single-head spatial self-attention: x + proj_out(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels: int, *, num_groups: int):
        super().__init__()
        self.norm = _norm(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)

        def tokens(conv):  # (B, 1, HW, C)
            return conv(h).reshape(b, 1, c, height * width).transpose(-1, -2)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        out = out.transpose(-1, -2).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding right and bottom by one (LDM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution (LDM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, attention (optional), ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, *, num_groups: int, dropout: float, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, num_groups=num_groups, dropout=dropout)
        self.attn_1 = AttnBlock(channels, num_groups=num_groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, num_groups=num_groups, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution: a list of ResnetBlocks, then an optional resampling."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = name if resample is not None else None
        if resample is not None:
            self.add_module(name, resample)  # LDM's key: down[i].downsample / up[i].upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.resample_name is None else getattr(self, self.resample_name)(x)


def _channels(ch: int, ch_mult) -> list[int]:
    """Channels of each level: ch * ch_mult[i]."""
    if len(ch_mult) < 1 or ch < 1 or any(int(m) < 1 for m in ch_mult):
        raise ValueError(f"need ch >= 1 and a non-empty ch_mult of positive ints, got ch={ch}, "
                         f"ch_mult={tuple(ch_mult)}")
    return [ch * int(m) for m in ch_mult]


class Encoder(nn.Module):
    """LDM's Encoder: (B, in_channels, H, W) -> (B, 2 z_channels, H / f, W / f) (mean, logvar)."""

    def __init__(self, *, in_channels: int, ch: int, ch_mult, num_res_blocks: int,
                 z_channels: int, num_groups: int, dropout: float, mid_attention: bool):
        super().__init__()
        widths = _channels(ch, ch_mult)
        kw = dict(num_groups=num_groups, dropout=dropout)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, **kw)
                      for j in range(num_res_blocks)]
            last = i == len(widths) - 1
            self.down.append(Level(blocks, None if last else Downsample(c_out), "downsample"))
            c_in = c_out
        self.mid = MidBlock(widths[-1], attention=mid_attention, **kw)
        self.norm_out = _norm(widths[-1], num_groups)
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """LDM's Decoder: (B, z_channels, H / f, W / f) -> (B, out_channels, H, W).

    As in LDM, `up[i]` works at the resolution of `down[i]` and runs from the last level to the
    first; each has num_res_blocks + 1 ResnetBlocks."""

    def __init__(self, *, out_channels: int, ch: int, ch_mult, num_res_blocks: int,
                 z_channels: int, num_groups: int, dropout: float, mid_attention: bool):
        super().__init__()
        widths = _channels(ch, ch_mult)
        kw = dict(num_groups=num_groups, dropout=dropout)
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], attention=mid_attention, **kw)
        levels = []
        c_in = widths[-1]
        for i in reversed(range(len(widths))):
            c_out = widths[i]
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, **kw)
                      for j in range(num_res_blocks + 1)]
            levels.insert(0, Level(blocks, None if i == 0 else Upsample(c_out), "upsample"))
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(widths[0], num_groups)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """The posterior q(z | x) = N(mean, diag(exp(logvar))), logvar clamped to [-30, 20] (LDM)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)  # (B, z_channels, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator=None) -> torch.Tensor:
        """z = mean + std * noise (the reparametrisation trick), noise from `generator`."""
        return self.mean + self.std * randn_like(self.mean, generator)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, summed over latent dims: (B,) (LDM's `kl`)."""
        terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        return 0.5 * terms.flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    """LDM's AutoencoderKL: `encode(x) -> DiagonalGaussian`, `decode(z) -> x_rec`.

    `scaling_factor` (and `shift_factor`) are the latent normalisation stored with released
    weights (0.18215 for Stable Diffusion); a latent score model sees (z - shift) * scale
    (see `sde.latent.LatentSpace`). `embed_dim` is LDM's name for the latent channels after
    `quant_conv`; it defaults to `z_channels` (as in every released LDM/SD VAE).
    """

    def __init__(self, *, in_channels: int = 3, out_channels: int | None = None, ch: int = 128,
                 ch_mult=(1, 2, 4, 4), num_res_blocks: int = 2, z_channels: int = 4,
                 embed_dim: int | None = None, num_groups: int = 32, dropout: float = 0.0,
                 mid_attention: bool = True, use_quant_conv: bool = True,
                 use_post_quant_conv: bool = True, scaling_factor: float | None = None,
                 shift_factor: float | None = None):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        embed_dim = z_channels if embed_dim is None else embed_dim
        if not use_quant_conv and embed_dim != z_channels:
            raise ValueError("embed_dim != z_channels needs use_quant_conv=True")
        if not use_post_quant_conv and embed_dim != z_channels:
            raise ValueError("embed_dim != z_channels needs use_post_quant_conv=True")
        kw = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                  z_channels=z_channels, num_groups=num_groups, dropout=dropout,
                  mid_attention=mid_attention)
        self.encoder = Encoder(in_channels=in_channels, **kw)
        self.decoder = Decoder(out_channels=out_channels, **kw)
        self.quant_conv = (nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
                           if use_quant_conv else nn.Identity())
        self.post_quant_conv = (nn.Conv2d(embed_dim, z_channels, 1)
                                if use_post_quant_conv else nn.Identity())
        self.in_channels, self.embed_dim = in_channels, embed_dim
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor

    def latent_shape(self, image_shape) -> tuple[int, ...]:
        """(B, embed_dim, H / f, W / f) for images shaped `image_shape` (B, C, H, W)."""
        b, c, height, width = image_shape
        f = self.downsample_factor
        if c != self.in_channels or height % f or width % f:
            raise ValueError(f"images shaped {tuple(image_shape)} do not fit this autoencoder: "
                             f"it needs {self.in_channels} channels and H, W divisible by f={f}")
        return (b, self.embed_dim, height // f, width // f)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) for images `x` (B, C, H, W) in [-1, 1]."""
        self.latent_shape(x.shape)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) from latents `z` (B, embed_dim, h, w)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, *, sample_posterior: bool = True, generator=None):
        """(x_rec, posterior): decode a posterior sample (or its mean)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, for LDM's adaptive adversarial weight."""
        return self.decoder.conv_out.weight


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) as taming-transformers' NLayerDiscriminator: (B, C, H, W)
    -> (B, 1, h, w) real/fake logits of overlapping patches; weights N(0, 0.02) as there."""

    def __init__(self, *, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_discriminator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = min(x.shape[-2:])
        if side // 2 ** self.n_layers < 3:  # each of the two k4 s1 p1 convs drops one pixel
            raise ValueError(f"{side}x{side} images are too small for n_layers={self.n_layers}: "
                             f"need a side of at least {3 * 2 ** self.n_layers} (lower n_layers)")
        return self.main(x)


def _init_discriminator(module: nn.Module) -> None:
    """taming's weights_init: conv N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def psnr(x: torch.Tensor, x_rec: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: 10 log10(range^2 / MSE); (B,)."""
    mse = (x - x_rec).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


__all__ = ["AutoencoderKL", "DiagonalGaussian", "Encoder", "Decoder", "PatchDiscriminator",
           "psnr"]

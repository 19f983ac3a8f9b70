"""NCSN++ and DDPM++ (Song et al. 2021, Appendix H): one configurable U-Net.

It computes what score_sde_pytorch's `NCSNpp` computes, option for option. Its blocks live in
one `nn.ModuleDict` (`self.blocks`) in the order of score_sde's `all_modules` list, which is
what `sde.convert.score_sde` relies on to map released checkpoints. As in score_sde, the
parameter-free pyramid resamplers of `progressive_input='input_skip'` and
`progressive='output_skip'` are not blocks (`self.pyramid_down`, `self.pyramid_up`): they hold
no weights and take no index in `all_modules`.

`cond` is what `get_score_fn(time_input=...)` passes: 999 t for DDPM++ (positional embedding),
sigma(t) for NCSN++ (Fourier embedding of log sigma; `scale_by_sigma` divides the output by it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sde.models.layers import (
    AttnBlock,
    Combine,
    Downsample,
    GaussianFourierProjection,
    ResnetBlock,
    Upsample,
    conv2d,
    get_act,
    group_norm,
    linear,
    timestep_embedding,
)
from sde.utils import append_dims

_CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "embedding_type": ("fourier", "positional"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
}


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net: `forward(x (B, C, H, W), cond (B,), class_labels=None)`.

    Class conditioning (`num_classes`) adds a learned label embedding to the time embedding;
    label `num_classes` is the null label (used when `class_labels` is None), for
    classifier-free guidance.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        in_channels: int = 3,
        nf: int = 128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions=(16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        conditional: bool = True,
        centered: bool = True,
        resblock_type: str = "biggan",
        fir: bool = False,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale: bool = True,
        embedding_type: str = "positional",
        fourier_scale: float = 16.0,
        progressive: str = "none",
        progressive_input: str = "none",
        progressive_combine: str = "sum",
        init_scale: float = 0.0,
        scale_by_sigma: bool = False,
        nonlinearity: str = "swish",
        num_classes: int | None = None,
        num_groups: int | None = None,
    ):
        super().__init__()
        opts = dict(resblock_type=resblock_type, embedding_type=embedding_type,
                    progressive=progressive, progressive_input=progressive_input,
                    progressive_combine=progressive_combine)
        for name, value in opts.items():
            if value not in _CHOICES[name]:
                raise ValueError(f"{name} must be one of {_CHOICES[name]}, got {value!r}")
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size {image_size} must be divisible by 2^(len(ch_mult)-1)")
        if num_classes is not None and not conditional:
            raise ValueError("num_classes needs conditional=True (labels join the time embedding)")
        self.nf, self.in_channels, self.image_size = nf, in_channels, image_size
        self.num_levels, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conditional, self.centered, self.scale_by_sigma = conditional, centered, scale_by_sigma
        self.resblock_type, self.embedding_type = resblock_type, embedding_type
        self.progressive, self.progressive_input = progressive, progressive_input
        self.skip_rescale, self.num_classes = skip_rescale, num_classes
        self.act = get_act(nonlinearity)
        resolutions = [image_size // 2**i for i in range(self.num_levels)]
        self.attn_at = [res in tuple(attn_resolutions) for res in resolutions]
        self._opts = dict(ch_mult=tuple(ch_mult), dropout=dropout,
                          resamp_with_conv=resamp_with_conv, fir=fir, fir_kernel=tuple(fir_kernel),
                          init_scale=init_scale,
                          num_groups=num_groups, combine=progressive_combine)
        self.blocks = nn.ModuleDict()
        self._build_pyramid_resamplers()
        self._build_embedding(fourier_scale)
        self._build_down()
        self._build_up()
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + 1, 4 * nf)

    # --- construction, in score_sde's module order -------------------------------------------
    def _resblock(self, in_ch, out_ch=None, resample=None) -> ResnetBlock:
        o = self._opts
        biggan = self.resblock_type == "biggan"
        return ResnetBlock(
            in_ch, out_ch, act=self.act, temb_dim=4 * self.nf if self.conditional else None,
            dropout=o["dropout"], skip_rescale=self.skip_rescale, init_scale=o["init_scale"],
            resample=resample, fir=o["fir"], fir_kernel=o["fir_kernel"],
            num_groups=o["num_groups"], skip_init=1.0 if biggan else 0.1)

    def _attn(self, channels) -> AttnBlock:
        o = self._opts
        return AttnBlock(channels, skip_rescale=self.skip_rescale, init_scale=o["init_scale"],
                         num_groups=o["num_groups"])

    def _resample(self, cls, in_ch, out_ch=None, with_conv=None):
        o = self._opts
        with_conv = o["resamp_with_conv"] if with_conv is None else with_conv
        return cls(in_ch, out_ch, with_conv=with_conv, fir=o["fir"], fir_kernel=o["fir_kernel"])

    def _build_pyramid_resamplers(self) -> None:
        """The weight-free FIR / naive resamplers of the input and output skip pyramids."""
        if self.progressive_input == "input_skip":
            self.pyramid_down = self._resample(Downsample, self.in_channels, with_conv=False)
        if self.progressive == "output_skip":
            self.pyramid_up = self._resample(Upsample, self.in_channels, with_conv=False)

    def _build_embedding(self, fourier_scale: float) -> None:
        nf, b = self.nf, self.blocks
        if self.embedding_type == "fourier":
            b["fourier"] = GaussianFourierProjection(embedding_size=nf, scale=fourier_scale)
        if self.conditional:
            embed_dim = 2 * nf if self.embedding_type == "fourier" else nf
            b["temb0"] = linear(embed_dim, 4 * nf)
            b["temb1"] = linear(4 * nf, 4 * nf)

    def _build_down(self) -> None:
        nf, b, o = self.nf, self.blocks, self._opts
        b["conv_in"] = conv2d(self.in_channels, nf, 3)
        hs_c, in_ch, pyramid_ch = [nf], nf, self.in_channels
        for i in range(self.num_levels):
            for j in range(self.num_res_blocks):
                b[f"down{i}_res{j}"] = self._resblock(in_ch, nf * o["ch_mult"][i])
                in_ch = nf * o["ch_mult"][i]
                if self.attn_at[i]:
                    b[f"down{i}_attn{j}"] = self._attn(in_ch)
                hs_c.append(in_ch)
            if i == self.num_levels - 1:
                continue
            b[f"down{i}_down"] = (self._resample(Downsample, in_ch) if self.resblock_type == "ddpm"
                                  else self._resblock(in_ch, resample="down"))
            if self.progressive_input == "input_skip":
                b[f"down{i}_combine"] = Combine(pyramid_ch, in_ch, o["combine"])
                in_ch = 2 * in_ch if o["combine"] == "cat" else in_ch
            elif self.progressive_input == "residual":
                b[f"down{i}_pyramid"] = self._resample(Downsample, pyramid_ch, in_ch, True)
                pyramid_ch = in_ch
            hs_c.append(in_ch)
        b["mid_res0"], b["mid_attn"], b["mid_res1"] = (
            self._resblock(in_ch), self._attn(in_ch), self._resblock(in_ch))
        self._skip_channels = hs_c

    def _build_up(self) -> None:
        nf, b, o, C = self.nf, self.blocks, self._opts, self.in_channels
        hs_c, in_ch, pyramid_ch = list(self._skip_channels), self._skip_channels[-1], 0
        for i in reversed(range(self.num_levels)):
            for j in range(self.num_res_blocks + 1):
                b[f"up{i}_res{j}"] = self._resblock(in_ch + hs_c.pop(), nf * o["ch_mult"][i])
                in_ch = nf * o["ch_mult"][i]
            if self.attn_at[i]:
                b[f"up{i}_attn"] = self._attn(in_ch)
            top = i == self.num_levels - 1
            if self.progressive == "output_skip":
                b[f"up{i}_pyramid_norm"] = group_norm(in_ch, o["num_groups"])
                b[f"up{i}_pyramid_conv"] = conv2d(in_ch, C, 3, init_scale=o["init_scale"])
            elif self.progressive == "residual":
                if top:
                    b[f"up{i}_pyramid_norm"] = group_norm(in_ch, o["num_groups"])
                    b[f"up{i}_pyramid_conv"] = conv2d(in_ch, in_ch, 3)
                else:
                    b[f"up{i}_pyramid_up"] = self._resample(Upsample, pyramid_ch, in_ch, True)
                pyramid_ch = in_ch
            if i != 0:
                b[f"up{i}_up"] = (self._resample(Upsample, in_ch) if self.resblock_type == "ddpm"
                                  else self._resblock(in_ch, resample="up"))
        if self.progressive != "output_skip":
            b["out_norm"] = group_norm(in_ch, o["num_groups"])
            b["out_conv"] = conv2d(in_ch, C, 3, init_scale=o["init_scale"])

    # --- forward ----------------------------------------------------------------------------
    def embed(self, cond: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        """Time (+ label) embedding (B, 4 nf), or None for an unconditional network."""
        if not self.conditional:
            return None
        temb = self.time_embedding(cond)  # (B, 4 nf)
        if self.num_classes is not None:
            if class_labels is None:
                class_labels = torch.full(cond.shape, self.num_classes, device=cond.device)
            temb = temb + self.label_emb(class_labels)
        return temb

    def time_embedding(self, cond: torch.Tensor) -> torch.Tensor:
        """The time embedding (B, 4 nf): Fourier features of log sigma (NCSN++) or sinusoidal
        features of 999 t (DDPM++), through two dense layers."""
        if self.embedding_type == "fourier":
            emb = self.blocks["fourier"](torch.log(cond))  # NCSN++ embeds log sigma
        else:
            emb = timestep_embedding(cond, self.nf)
        return self.blocks["temb1"](self.act(self.blocks["temb0"](emb)))

    def check_input(self, x: torch.Tensor) -> None:
        """A ValueError unless x is (B, in_channels, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x shaped (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")

    def _down(self, x: torch.Tensor, temb) -> list[torch.Tensor]:
        b, skip = self.blocks, self.skip_rescale
        pyramid = x
        hs = [b["conv_in"](x)]
        for i in range(self.num_levels):
            for j in range(self.num_res_blocks):
                h = b[f"down{i}_res{j}"](hs[-1], temb)
                hs.append(b[f"down{i}_attn{j}"](h) if self.attn_at[i] else h)
            if i == self.num_levels - 1:
                continue
            h = b[f"down{i}_down"](hs[-1], temb)
            if self.progressive_input == "input_skip":
                pyramid = self.pyramid_down(pyramid)  # (B, C, H_i, W_i)
                h = b[f"down{i}_combine"](pyramid, h)
            elif self.progressive_input == "residual":
                pyramid = b[f"down{i}_pyramid"](pyramid) + h
                pyramid = pyramid / math.sqrt(2.0) if skip else pyramid
                h = pyramid
            hs.append(h)
        return hs

    def _output_pyramid(self, i: int, h: torch.Tensor, pyramid):
        """Progressive output (score_sde's `progressive`): returns (h, pyramid)."""
        b, top = self.blocks, i == self.num_levels - 1
        if self.progressive == "output_skip":
            out = b[f"up{i}_pyramid_conv"](self.act(b[f"up{i}_pyramid_norm"](h)))
            return h, (out if top else self.pyramid_up(pyramid) + out)  # no 1/sqrt(2) here
        if top:  # residual
            return h, b[f"up{i}_pyramid_conv"](self.act(b[f"up{i}_pyramid_norm"](h)))
        pyramid = b[f"up{i}_pyramid_up"](pyramid) + h
        pyramid = pyramid / math.sqrt(2.0) if self.skip_rescale else pyramid
        return pyramid, pyramid

    def _up(self, h: torch.Tensor, hs: list[torch.Tensor], temb) -> torch.Tensor:
        b, pyramid = self.blocks, None
        for i in reversed(range(self.num_levels)):
            for j in range(self.num_res_blocks + 1):
                h = b[f"up{i}_res{j}"](torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_at[i]:
                h = b[f"up{i}_attn"](h)
            if self.progressive != "none":
                h, pyramid = self._output_pyramid(i, h, pyramid)
            if i != 0:
                h = b[f"up{i}_up"](h, temb)
        if self.progressive == "output_skip":
            return pyramid
        return b["out_conv"](self.act(b["out_norm"](h)))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, class_labels=None) -> torch.Tensor:
        self.check_input(x)
        temb = self.embed(cond, class_labels)
        if not self.centered:  # data in [0, 1] -> [-1, 1]
            x = 2 * x - 1.0
        hs = self._down(x, temb)  # skip connections, (B, C_i, H_i, W_i)
        b = self.blocks
        h = b["mid_res1"](b["mid_attn"](b["mid_res0"](hs[-1], temb)), temb)
        h = self._up(h, hs, temb)  # (B, C, H, W)
        if self.scale_by_sigma:  # NCSN++ / NCSNv2: the network output divided by sigma
            h = h / append_dims(cond.to(h.dtype), h.ndim)
        return h

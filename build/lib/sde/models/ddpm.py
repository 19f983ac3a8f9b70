"""The DDPM U-Net of Ho et al. (2020), as score_sde_pytorch's `DDPM` model.

It is the NCSN++ U-Net with DDPM's choices: DDPM residual blocks without skip rescaling,
32-group GroupNorm, positional embedding of the step, nearest / strided-conv resampling.
"""

from __future__ import annotations

from sde.models.ncsnpp import NCSNpp


class DDPM(NCSNpp):
    """DDPM U-Net: `forward(x (B, C, H, W), cond (B,), class_labels=None)`; `cond` is the step
    (score_sde feeds t (N - 1) for discrete models, 999 t for continuous ones)."""

    def __init__(
        self,
        *,
        image_size: int = 32,
        in_channels: int = 3,
        nf: int = 128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions=(16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        centered: bool = True,
        nonlinearity: str = "swish",
        num_classes: int | None = None,
        num_groups: int = 32,
    ):
        super().__init__(
            image_size=image_size, in_channels=in_channels, nf=nf, ch_mult=ch_mult,
            num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
            resamp_with_conv=resamp_with_conv, conditional=True, centered=centered,
            resblock_type="ddpm", fir=False, skip_rescale=False, embedding_type="positional",
            progressive="none", progressive_input="none", init_scale=0.0, scale_by_sigma=False,
            nonlinearity=nonlinearity, num_classes=num_classes, num_groups=num_groups,
        )

"""A noise-conditional classifier p_t(y | x_t) for classifier guidance (Song et al. 2021, Sec. 5
and Eq. 14; their CIFAR-10 classifier is a noise-conditional Wide ResNet, App. I).

`NCSNppClassifier` is the downsampling half of the NCSN++ / DDPM++ U-Net of `sde.models.ncsnpp`
(time embedding, residual levels, middle block) with a pooled linear head. `get_classifier_fn`
turns it into `classifier_fn(x, t)`, the log-probabilities that `sde.losses.classifier_loss`
trains and `sde.sampling.controllable.classifier_guided_score` differentiates.
"""

from __future__ import annotations

import torch

from sde.models.layers import group_norm, linear
from sde.models.ncsnpp import NCSNpp


class NCSNppClassifier(NCSNpp):
    """`forward(x (B, C, H, W), cond (B,)) -> logits (B, num_classes)`: NCSN++'s encoder and
    middle block at noise level `cond`, then GroupNorm, the activation, global average pooling
    and a dense layer. Takes NCSNpp's keyword arguments; `num_classes` is the number of classes
    it predicts (the labels are its output, never its input)."""

    def __init__(self, *, num_classes: int = 10, conditional: bool = True, **options):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not conditional:
            raise ValueError("a noise-conditional classifier sees the time: set "
                             "model.conditional=true")
        super().__init__(conditional=True, num_classes=None, **options)
        self.num_classes = num_classes
        channels = self._skip_channels[-1]
        self.blocks["head_norm"] = group_norm(channels, self._opts["num_groups"])
        self.blocks["head"] = linear(channels, num_classes)

    def _build_up(self) -> None:
        """No decoder: the classifier stops after the middle block."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        temb = self.time_embedding(cond)  # (B, 4 nf)
        if not self.centered:  # data in [0, 1] -> [-1, 1]
            x = 2 * x - 1.0
        b = self.blocks
        h = self._down(x, temb)[-1]
        h = b["mid_res1"](b["mid_attn"](b["mid_res0"](h, temb)), temb)  # (B, C', H', W')
        return b["head"](self.act(b["head_norm"](h)).mean(dim=(2, 3)))  # (B, num_classes)


def time_options(score: dict) -> dict:
    """The keys of a run's `score` section that say how a network sees the time (a classifier
    of that run sees it the same way)."""
    return {k: score[k] for k in ("time_input", "time_scale", "std") if k in score}


def get_classifier_fn(sde, model, *, time_input: str = "t", time_scale: float = 999.0,
                      std: str = "exact", model_kwargs: dict | None = None):
    """Wrap a classifier `model(x, cond) -> logits` into `classifier_fn(x, t)`: log p_t(y | x)
    (B, C) in nats, or with `model_kwargs={"class_labels": y}` the log-probability of each
    example's own label, (B,). The network sees the time as a score network would
    (`time_input`, `time_scale`, `std`: the options of `sde.models.get_score_fn`). The labels
    ride in `model_kwargs` because that is where the training loop puts them."""
    from sde.models import STDS, TIME_INPUTS, _check_option, model_time

    _check_option("time_input", time_input, TIME_INPUTS)
    _check_option("std", std, STDS)
    kwargs = dict(model_kwargs or {})
    labels = kwargs.pop("class_labels", None)
    if kwargs:
        raise ValueError(f"a classifier takes only class_labels, got {sorted(kwargs)}")

    def classifier_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, _, _ = model_time(sde, t, time_input, time_scale, std)
        log_p = torch.log_softmax(model(x, cond).float(), dim=-1)  # (B, C)
        if labels is None:
            return log_p
        return log_p.gather(1, labels.to(log_p.device)[:, None]).squeeze(1)

    return classifier_fn

"""Exponential moving average of a model's weights (Polyak averaging), used for sampling and
evaluation as in Song et al. (2021): theta_ema <- d_k theta_ema + (1 - d_k) theta, with score_sde's
warm-up d_k = min(decay, (1 + k) / (10 + k)) at the k-th update (its `use_num_updates=True`), so
early averages do not remember the random initial weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds `model_ema`, an eval-mode copy of `model` whose floating-point parameters track an
    exponential moving average; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.model_ema = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, num_updates: int) -> float:
        """d_k = min(decay, (1 + k) / (10 + k)) for the k-th update (k >= 1)."""
        return min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        """The `num_updates`-th EMA step (1, 2, ...) towards `model`'s current weights."""
        ema_params = [p for p in self.model_ema.parameters() if p.dtype.is_floating_point]
        params = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay_at(num_updates))
        for b_ema, b in zip(self.model_ema.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        """The EMA weights as a full state dict of the model."""
        return self.model_ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model_ema.load_state_dict(state)

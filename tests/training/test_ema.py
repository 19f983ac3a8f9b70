"""EMA with score_sde's warm-up, and the learning-rate warm-up."""

import math

import pytest
import torch
from torch import nn

from sde.training.ema import EMA
from sde.training.loop import TrainSettings, lr_at


def test_ema_follows_the_warmed_up_decay():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for k in range(1, 201):
        ema.update(model, k)
    # ema = 1 - prod_k d_k (every update pulls towards 1 from the initial 0)
    remaining = math.prod(min(0.999, (1 + k) / (10 + k)) for k in range(1, 201))
    torch.testing.assert_close(ema.model_ema.weight, torch.full((1, 2), 1 - remaining))
    assert not ema.model_ema.training and not ema.model_ema.weight.requires_grad
    assert ema.decay_at(10**6) == 0.999 and ema.decay_at(1) == pytest.approx(2 / 11)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_linear_lr_warmup():
    s = TrainSettings(lr=2e-4, warmup=5000)
    assert lr_at(1, s) == pytest.approx(2e-4 / 5000)
    assert lr_at(2500, s) == pytest.approx(1e-4) and lr_at(10**6, s) == 2e-4
    assert lr_at(1, TrainSettings(lr=1e-3, warmup=0)) == 1e-3

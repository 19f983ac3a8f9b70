"""Labels through training: the batch's labels reach the network, label dropout has its rate,
and a resumed class-conditional run equals the uninterrupted one."""

import json

import pytest
import torch

from sde.data import DataError, Dataset, sources, step_indices
from sde.models.ncsnpp import NCSNpp
from sde.train import run
from sde.training.distributed import DistInfo
from sde.training.loop import TrainSettings, step_labels

from .conftest import COND, compose_train


def test_batch_labels_are_the_labels_of_the_batch_images():
    data = Dataset("digits", levels=17, labels=True)
    images, labels = sources.digits(train=True), sources.digits_labels(train=True)
    for step in (0, 7, 93):  # 93 crosses an epoch boundary at batch 32
        x = data.batch(step, 32, seed=3)
        y = data.batch_labels(step, 32, seed=3)
        # each batch image is some training image; its label is that image's label
        raw = torch.round((x + 1) / 2 * 16).to(torch.uint8)  # (32, 1, 8, 8) back to levels
        idx = step_indices(len(images), step, 32, seed=3)
        assert torch.equal(raw, images[idx]) and torch.equal(y, labels[idx])
    assert Dataset("digits", levels=17).labels is None  # unconditional data unchanged


def test_labels_on_unlabelled_data_is_a_clear_error():
    with pytest.raises(DataError, match="no class labels"):
        Dataset("two_moons", labels=True)
    with pytest.raises(DataError, match="data.labels=true"):
        Dataset("digits", levels=17).batch_labels(0, 4, seed=0)


@pytest.mark.parametrize("dropout", [0.0, 0.1, 1.0])
def test_label_dropout_rate(dropout):
    data = Dataset("digits", levels=17, labels=True)
    s = TrainSettings(seed=0, label_dropout=dropout)
    ys = torch.stack([step_labels(data, k, 128, s=s, info=DistInfo(), dropout=dropout)
                      for k in range(1, 201)])  # (200, 128)
    rate = (ys == 10).float().mean().item()
    assert abs(rate - dropout) < 0.01  # binomial sd 0.002 at p = 0.1
    kept = ys != 10
    truth = torch.stack([data.batch_labels(k - 1, 128, seed=0) for k in range(1, 201)])
    assert torch.equal(ys[kept], truth[kept])


def test_labels_reach_the_network(tmp_path, monkeypatch):
    seen = []
    real = NCSNpp.forward

    def probe(self, x, cond, class_labels=None):
        if torch.is_grad_enabled():
            seen.append(class_labels.clone())
        return real(self, x, cond, class_labels=class_labels)

    monkeypatch.setattr(NCSNpp, "forward", probe)
    run(compose_train([*COND, "trainer.steps=3", "trainer.label_dropout=0.5"]), tmp_path / "r")
    labels = sources.digits_labels(train=True)
    assert len(seen) == 3
    for step, y in enumerate(seen, start=1):
        truth = labels[step_indices(1500, step - 1, 16, seed=0)]
        kept = y != 10
        assert torch.equal(y[kept], truth[kept]) and 0 < kept.sum() < 16


def test_conditional_network_is_required(tmp_path):
    with pytest.raises(ValueError, match="model.num_classes=10"):
        run(compose_train([*COND, "model.num_classes=null", "trainer.steps=1"]), tmp_path / "r")
    with pytest.raises(ValueError, match="set data.labels=true"):
        run(compose_train([*COND, "data.labels=false", "model.num_classes=null",
                           "trainer.steps=1"]), tmp_path / "u")
    with pytest.raises(ValueError, match=r"trainer.label_dropout must be in \[0, 1\]"):
        TrainSettings(label_dropout=1.5)


def test_resume_is_bit_exact(tmp_path):
    whole = tmp_path / "whole"
    run(compose_train([*COND, "trainer.steps=6"]), whole)
    split = tmp_path / "split"
    run(compose_train([*COND, "trainer.steps=3"]), split)
    run(compose_train([*COND, "trainer.steps=6"]), split)
    history = lambda d: [(h["step"], h["loss"]) for h in
                         json.loads((d / "metrics.json").read_text())["history"]]
    assert history(split) == history(whole)

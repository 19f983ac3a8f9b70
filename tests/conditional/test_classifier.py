"""The paper's route to class-conditional samples (Song et al. 2021, Sec. 5, Eq. 14): a
noise-conditional classifier p_t(y | x_t) trained on the SDE's perturbation kernel
(experiment=classifier_digits), and classifier guidance through sde.sample classifier=RUN."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from sde import VPSDE
from sde.losses import classifier_loss
from sde.models import NCSNppClassifier, get_classifier_fn
from sde.oracle import LabelledMixture
from sde.runs.checkpoint import CheckpointError
from sde.runs.load import load_classifier, load_run
from sde.runs.sampling import check_classifier, class_score_fn, sample_run
from sde.train import run

from .conftest import CLASSIFIER, UNCOND, compose_train

TINY_NET = dict(image_size=8, in_channels=1, nf=8, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(), num_groups=4)


def vp_std(t):
    """The VP SDE's std(t) in closed form (beta_min 0.1, beta_max 20; Song et al. 2021, Eq. 29)."""
    return math.sqrt(1 - math.exp(-(0.1 * t + 0.5 * (20 - 0.1) * t**2)))


def test_classifier_fn_is_the_log_softmax_of_the_network_at_999t():
    model = NCSNppClassifier(num_classes=10, **TINY_NET).eval()
    x, t = torch.randn(5, 1, 8, 8), torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    logits = model(x, 999.0 * t)
    assert logits.shape == (5, 10)
    truth = logits - torch.logsumexp(logits, 1, keepdim=True)
    torch.testing.assert_close(get_classifier_fn(VPSDE(), model)(x, t), truth)
    y = torch.tensor([0, 9, 3, 3, 1])
    picked = get_classifier_fn(VPSDE(), model, model_kwargs={"class_labels": y})(x, t)
    torch.testing.assert_close(picked, truth[torch.arange(5), y])
    assert not torch.allclose(model(x, 999.0 * t.flip(0)), logits)  # it sees the time


def test_classifier_network_errors():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        NCSNppClassifier(num_classes=1, **TINY_NET)
    with pytest.raises(ValueError, match="model.conditional=true"):
        NCSNppClassifier(conditional=False, **TINY_NET)
    with pytest.raises(ValueError, match="only class_labels"):
        get_classifier_fn(VPSDE(), NCSNppClassifier(**TINY_NET), model_kwargs={"mask": 1})
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        NCSNppClassifier(**TINY_NET)(torch.zeros(2, 3, 8, 8), torch.ones(2))


def test_classifier_loss_draws_x_t_from_the_kernel():
    """x_t ~ N(alpha(t) x, std(t)^2 I) with the closed-form VP coefficients; t ~ U(eps, T)."""
    seen = {}

    def probe(x_t, t):
        seen.update(x_t=x_t, t=t)
        return -torch.full((x_t.shape[0],), 0.25)

    x = torch.full((20000, 2), 1.5)
    g = torch.Generator().manual_seed(0)
    loss = classifier_loss(VPSDE(), probe, x, t=torch.full((20000,), 0.4), generator=g)
    assert torch.equal(loss, torch.full((20000,), 0.25))  # minus the classifier's log-probability
    std = vp_std(0.4)
    alpha = math.sqrt(1 - std**2)
    assert abs(seen["x_t"].mean().item() - 1.5 * alpha) < 4 * std / math.sqrt(40000)
    assert abs(seen["x_t"].std().item() - std) < 0.01 * std
    classifier_loss(VPSDE(), probe, x, eps=0.2, generator=g)
    t = seen["t"]
    assert t.min() >= 0.2 and t.max() <= 1.0 and abs(t.mean().item() - 0.6) < 0.01


def test_the_exact_noisy_classifier_minimises_the_loss():
    """On a labelled mixture the expected loss at time t is smallest for the exact p_t(c | x)
    of that t (not of another noise level): the loss perturbs with the SDE's own kernel."""
    mix = LabelledMixture([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], [0.4, 0.5, 0.3],
                          [0.4, 0.3, 0.3], labels=[0, 1, 1])
    sde = VPSDE()
    x0, comp = mix.sample(40000, torch.Generator().manual_seed(1), return_labels=True)
    y = mix.labels[comp]

    def expected_loss(t_true, t_classifier):
        exact = lambda x, t: mix.class_log_prob(x, torch.full_like(t, t_classifier), sde).gather(
            1, y[:, None]).squeeze(1)
        g = torch.Generator().manual_seed(2)
        return classifier_loss(sde, exact, x0, t=torch.full((len(x0),), t_true), generator=g).mean()

    for t in (0.2, 0.4):  # measured: 0.38 vs 0.44 / 0.44 and 0.61 vs 0.71 / 0.65; seeds +-0.004
        right = expected_loss(t, t)
        assert right < expected_loss(t, 0.6 * t) - 0.02
        assert right < expected_loss(t, 1.6 * t) - 0.02


def test_two_step_experiment(classifier_run):
    """experiment=classifier_digits through the score loop: checkpoints, metrics and config."""
    metrics = json.loads((classifier_run / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [1, 2]
    assert all(math.isfinite(h["loss"]) and 0.5 < h["loss"] < 10 for h in metrics["history"])
    assert not (classifier_run / "samples").exists()  # a classifier draws no samples
    clf = load_classifier(classifier_run, device="cpu")
    assert clf.config["task"] == "classifier" and clf.step == 2 and clf.num_classes == 10
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0.2, 0.5, 0.8]), torch.tensor([4, 0, 7])
    logits = clf.model(x, 999.0 * t)
    truth = (logits - torch.logsumexp(logits, 1, keepdim=True))[torch.arange(3), y]
    torch.testing.assert_close(clf.log_prob_fn(y)(x, t), truth)
    with pytest.raises(CheckpointError, match="classifier="):
        load_run(classifier_run, device="cpu")


def test_resume_is_bit_exact(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(compose_train([*CLASSIFIER, "trainer.steps=4"]), whole)
    run(compose_train([*CLASSIFIER, "trainer.steps=2"]), split)
    run(compose_train([*CLASSIFIER, "trainer.steps=4"]), split)
    history = lambda d: [(h["step"], h["loss"]) for h in
                         json.loads((d / "metrics.json").read_text())["history"]]
    assert history(split) == history(whole)


@pytest.mark.parametrize("override, message", [
    ("data.labels=false", "data.labels=true"),
    ("loss=dsm", "loss=classifier"),
    ("trainer.label_dropout=0.1", "trainer.label_dropout=0"),
])
def test_bad_classifier_configs(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        run(compose_train([*CLASSIFIER, override, "trainer.steps=1"]), tmp_path / "r")


def test_class_score_fn_with_a_classifier_is_score_plus_w_grad_log_p(uncond_run, classifier_run):
    """s(x) + w grad_x log p_t(y | x), the gradient taken here by autograd of the network."""
    score_run = load_run(uncond_run, device="cpu")
    clf = load_classifier(classifier_run, device="cpu")
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 0.3), torch.tensor([1, 1, 5, 8])
    x_req = x.clone().requires_grad_(True)
    logits = clf.model(x_req, 999.0 * t)
    log_p = (logits - torch.logsumexp(logits, 1, keepdim=True))[torch.arange(4), y]
    (grad,) = torch.autograd.grad(log_p.sum(), x_req)
    score = -score_run.model(x, 999.0 * t) / vp_std(0.3)
    guided = class_score_fn(score_run, y, 2.0, classifier=clf)(0, 4)(x, t)
    torch.testing.assert_close(guided, score + 2.0 * grad)


def test_sample_with_a_classifier(uncond_run, classifier_run, tmp_path):
    out = tmp_path / "s.npz"
    record = sample_run(uncond_run, sampler_options={"steps": 25}, n=4, batch_size=4, out=out,
                        device="cpu", progress=False, label="all", classifier=classifier_run)
    f = np.load(out)
    assert f["samples"].shape == (4, 1, 8, 8) and np.isfinite(f["samples"]).all()
    assert f["labels"].tolist() == [0, 2, 5, 7]
    assert record["guidance"] == 1.0 and record["classifier"].startswith(str(classifier_run))


def test_classifier_sampling_errors(uncond_run, classifier_run, tmp_path):
    out = tmp_path / "x.npz"
    with pytest.raises(ValueError, match="also give label=C"):
        sample_run(uncond_run, n=2, classifier=classifier_run, out=out, device="cpu")
    with pytest.raises(CheckpointError, match="not a classifier run"):
        sample_run(uncond_run, n=2, label=1, classifier=uncond_run, out=out, device="cpu")
    with pytest.raises(ValueError, match="or give classifier="):
        sample_run(uncond_run, n=2, label=1, out=out, device="cpu")
    score_run, clf = load_run(uncond_run, device="cpu"), load_classifier(classifier_run)
    check_classifier(score_run, clf)
    with pytest.raises(ValueError, match="run's SDE"):
        check_classifier(score_run, dataclasses.replace(clf, sde=VPSDE(beta_max=10.0)))
    with pytest.raises(ValueError, match="centered"):
        check_classifier(score_run, dataclasses.replace(clf, data={**clf.data, "centered": False}))


@pytest.mark.slow  # a python -m sde.sample process: ~10-50 s on 2 busy cores
def test_cli_classifier(uncond_run, classifier_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli.npz"
    done = subprocess.run([sys.executable, "-m", "sde.sample", f"run={uncond_run}",
                           f"classifier={classifier_run}", "label=7", "guidance=2", "n=3",
                           "sampler.steps=25", f"out={out}", "progress=false", "device=cpu"],
                          check=True, capture_output=True, text=True)
    assert np.load(out)["labels"].tolist() == [7, 7, 7]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["guidance"] == 2 and "classifier" in record


@pytest.mark.slow  # 300 steps of a tiny classifier: ~20 s on an idle CPU
def test_a_tiny_classifier_learns_the_digits(tmp_path):
    """Trained on noisy digits, it classifies held-out digits at low noise and is near chance
    (log 10 nats) at t = T, where x_T carries almost nothing of x_0."""
    from sde.metrics.digits import real_digits

    run(compose_train([*CLASSIFIER, "model.nf=16", "trainer.steps=300", "trainer.batch_size=64",
                       "optim.warmup=20", "trainer.ema_decay=0.99"]), tmp_path / "clf")
    clf = load_classifier(tmp_path / "clf", device="cpu")
    x, y = real_digits(train=False)  # (297, 1, 8, 8) in [-1, 1], labels
    with torch.no_grad():
        low = clf.log_prob_fn(y)(x, torch.full((len(x),), 0.01))
        high = clf.log_prob_fn(y)(torch.randn_like(x), torch.ones(len(x)))
        accuracy = (get_classifier_fn(clf.sde, clf.model)(x, torch.full((len(x),), 0.01))
                    .argmax(1) == y).float().mean().item()
    assert accuracy > 0.85 and -low.mean() < 0.5
    assert abs(-high.mean().item() - math.log(10)) < 0.3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_classifier_training_and_guidance_on_cuda(tmp_path):
    run(compose_train([*CLASSIFIER, "trainer.steps=2", "trainer.device=cuda"]), tmp_path / "clf")
    run(compose_train([*UNCOND, "trainer.steps=2", "trainer.device=cuda"]), tmp_path / "vp")
    clf = load_classifier(tmp_path / "clf", device="cuda")
    assert next(clf.model.parameters()).device.type == "cuda"
    out = tmp_path / "s.npz"
    record = sample_run(tmp_path / "vp", sampler_options={"steps": 25}, n=6, out=out,
                        device="cuda", progress=False, label=3, guidance=2.0,
                        classifier=tmp_path / "clf")
    f = np.load(out)
    assert record["device"].startswith("cuda") and f["labels"].tolist() == [3] * 6
    assert np.isfinite(f["samples"]).all()

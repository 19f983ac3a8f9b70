"""The oracle's exact posteriors and conditional scores against independent truth: importance
sampling and quadrature of the prior density for the posteriors, Monte-Carlo averages of the
perturbation kernel over exact posterior draws for the scores at t, and autograd of
log-densities written here with torch.distributions."""

import math

import pytest
import torch

from sde import VESDE, VPSDE, SubVPSDE, sampling
from sde.metrics.two_sample import energy_distance
from sde.oracle import FullCovarianceMixture, GaussianMixture, LabelledMixture
from sde.sampling.controllable import classifier_guided_score

MIX3 = GaussianMixture([[-1.0, 0.5, 0.0], [1.2, -0.4, 0.8], [0.1, 1.5, -1.0]],
                       [[0.5, 0.4, 0.6], [0.3, 0.7, 0.5], [0.6, 0.5, 0.4]], [0.5, 0.3, 0.2])
SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)]
# times with std(t) >= 0.3, where kernel-weighted Monte Carlo over 4e5 draws is accurate
TIMES = {"VPSDE": (0.3, 0.7), "SubVPSDE": (0.3, 0.7), "VESDE": (0.6, 0.8)}


def prior_log_density(mix: GaussianMixture, x):
    """log sum_k w_k N(x; mu_k, diag s_k^2), written from torch.distributions."""
    comps = torch.distributions.Independent(
        torch.distributions.Normal(mix.means.flatten(1), mix.stds.flatten(1)), 1)
    return torch.logsumexp(torch.log(mix.weights) + comps.log_prob(x.double()[:, None, :]), 1)


def weighted_moments(x, log_w):
    """Self-normalised mean (D,), covariance (D, D) and effective sample size."""
    w = torch.softmax(log_w, 0)
    mean = w @ x
    centred = x - mean
    return mean, (w[:, None] * centred).T @ centred, 1.0 / (w**2).sum()


def test_linear_posterior_matches_importance_sampling():
    """p(x | A x + noise = y) against prior draws weighted by the likelihood N(y; A x, s^2)."""
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]], dtype=torch.float64)
    y, s = torch.tensor([0.4, -0.9], dtype=torch.float64), 0.5
    post = MIX3.posterior(A, y, s)
    x = MIX3.sample(400_000, g, dtype=torch.float64)
    log_lik = -0.5 * ((y - x @ A.T) ** 2).sum(1) / s**2
    mean_is, cov_is, ess = weighted_moments(x, log_lik)
    mean, cov = post.mean_and_cov()
    se = (cov.diagonal() / ess).sqrt()
    assert ess > 30_000
    assert ((mean - mean_is).abs() < 5 * se).all(), (mean, mean_is)
    torch.testing.assert_close(cov, cov_is, atol=0.02, rtol=0.03)
    # and the mixture samples what it says
    draws = post.sample(200_000, g, dtype=torch.float64)
    torch.testing.assert_close(draws.mean(0), mean, atol=5 * float(cov.diagonal().max().sqrt())
                               / math.sqrt(200_000), rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=0.01, rtol=0.02)


def test_coordinate_posterior_matches_quadrature():
    """p(x0 | x1 = y) of a 2-D mixture against the prior density on a fine grid of x0."""
    mix = GaussianMixture([[-1.5, -1.0], [1.5, 0.0], [0.0, 1.5]],
                          [[0.4, 0.6], [0.5, 0.5], [0.3, 0.7]], [0.4, 0.35, 0.25])
    for y1 in (-0.8, 0.5, 1.7):
        grid = torch.linspace(-6, 6, 20001, dtype=torch.float64)
        pts = torch.stack([grid, torch.full_like(grid, y1)], 1)
        dens = torch.softmax(prior_log_density(mix, pts), 0)  # quadrature weights
        mean_q = (dens * grid).sum()
        var_q = (dens * (grid - mean_q) ** 2).sum()
        post = mix.condition([0, 1], [0.0, y1])
        mean, cov = post.mean_and_cov()
        assert abs(mean[0] - mean_q) < 1e-6 and abs(cov[0, 0] - var_q) < 1e-6
        assert abs(mean[1] - y1) < 1e-12 and abs(cov[1, 1]) < 1e-12 and abs(cov[0, 1]) < 1e-12
        draws = post.sample(1000, torch.Generator().manual_seed(1))
        assert (draws[:, 1] == torch.tensor(y1, dtype=torch.float32)).all()


def mc_score(post_draws, x, alpha, std):
    """grad log E_{x0 ~ post}[N(x; alpha x0, std^2)] by Monte Carlo over exact posterior draws:
    sum_j w_j (alpha x0_j - x) / std^2 / sum_j w_j, w_j = N(x; alpha x0_j, std^2)."""
    diff = alpha * post_draws[None] - x[:, None]  # (B, J, D)
    log_w = -0.5 * (diff**2).sum(-1) / std**2
    w = torch.softmax(log_w, 1)[..., None]
    return (w * diff).sum(1) / std**2


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("kind", ["coordinates", "linear"])
def test_posterior_score_at_t(sde, kind):
    """The score of p_t(x | y) against Monte Carlo over posterior draws, and against autograd of
    its own closed-form log-density."""
    g = torch.Generator().manual_seed(2)
    if kind == "coordinates":
        post = MIX3.condition([1, 0, 0], [0.3, 0.0, 0.0])
    else:
        post = MIX3.posterior(torch.tensor([[1.0, 1.0, -1.0]]), [0.5], 0.2)
    draws = post.sample(400_000, g, dtype=torch.float64)
    for t in TIMES[type(sde).__name__]:
        alpha, std = (v.item() for v in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
        x = post.sample_marginal(sde, t, 6, g, dtype=torch.float64)
        vec_t = torch.full((6,), t, dtype=torch.float64)
        exact = post.score(x, vec_t, sde)
        scale = exact.abs().max() + 1.0 / std
        torch.testing.assert_close(exact, mc_score(draws, x, alpha, std), atol=0.02 * scale, rtol=0)
        x_req = x.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(post.log_prob(x_req, vec_t, sde).sum(), x_req)
        torch.testing.assert_close(exact, auto, atol=1e-9, rtol=1e-9)


def test_full_covariance_mixture_rejects_bad_shapes():
    with pytest.raises(ValueError, match="covs must be"):
        FullCovarianceMixture(torch.zeros(2, 3), torch.eye(3))
    with pytest.raises(ValueError, match="A must be"):
        MIX3.posterior(torch.ones(1, 2), [0.0])
    with pytest.raises(ValueError, match="one per row"):
        MIX3.posterior(torch.ones(2, 3), [0.0])


# --- the labelled (class-conditional) mixture ----------------------------------------------
LABELLED = LabelledMixture([[-2.0, 0.0], [2.0, 0.5], [0.0, -2.0], [0.5, 2.0]],
                           [0.5, 0.6, 0.4, 0.7], [0.3, 0.2, 0.25, 0.25], labels=[0, 1, 0, 1])


def class_log_joint(x, t, sde):
    """log p(c) p_t(x | c) (B, C), written here from torch.distributions."""
    alpha, std = (v.item() for v in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
    scale = torch.sqrt(alpha**2 * LABELLED.stds**2 + std**2)
    comps = torch.distributions.Independent(torch.distributions.Normal(alpha * LABELLED.means,
                                                                       scale), 1)
    log_k = torch.log(LABELLED.weights) + comps.log_prob(x[:, None, :])  # (B, K)
    return torch.stack([torch.logsumexp(log_k[:, LABELLED.labels == c], 1) for c in (0, 1)], 1)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_class_conditional_scores(sde):
    """p_t(c | x), grad log p_t(x | c) against autograd of independent log-densities, and the
    conditional mixture against Monte Carlo over labelled draws."""
    g = torch.Generator().manual_seed(3)
    t = TIMES[type(sde).__name__][0]
    x = LABELLED.sample_marginal(sde, t, 8, g, dtype=torch.float64)
    vec_t = torch.full((8,), t, dtype=torch.float64)
    joint = class_log_joint(x, t, sde)
    torch.testing.assert_close(LABELLED.class_log_prob(x, vec_t, sde),
                               joint - torch.logsumexp(joint, 1, keepdim=True))
    labels = torch.tensor([0, 1] * 4)
    x_req = x.clone().requires_grad_(True)
    picked = class_log_joint(x_req, t, sde).gather(1, labels[:, None]).sum()
    (auto,) = torch.autograd.grad(picked, x_req)
    torch.testing.assert_close(LABELLED.conditional_score(x, vec_t, sde, labels), auto)
    # Monte Carlo: the mixture of class 1's components, drawn by rejection on the labels
    draws, comp = LABELLED.sample(400_000, g, return_labels=True, dtype=torch.float64)
    draws = draws[LABELLED.labels[comp] == 1]
    alpha, std = (v.item() for v in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
    x1 = LABELLED.conditional(1).sample_marginal(sde, t, 8, g, dtype=torch.float64)  # where p_t(. | 1) lives
    exact = LABELLED.conditional_score(x1, vec_t, sde, 1)
    scale = exact.abs().max() + 1.0 / std
    torch.testing.assert_close(exact, mc_score(draws, x1, alpha, std), atol=0.02 * scale, rtol=0)
    assert torch.allclose(LABELLED.class_probs(), torch.tensor([0.55, 0.45], dtype=torch.float64))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_guidance(sde):
    """guided_score at w = 0 is the conditional score exactly; at w it is grad log p_t(x | c)
    + w grad log p_t(c | x) (Ho & Salimans 2022, Eq. 6 rewritten); classifier guidance at w = 1
    with the exact noisy classifier is the conditional score."""
    x = LABELLED.sample_marginal(sde, 0.5, 6, torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.full((6,), 0.5, dtype=torch.float64)
    cond, uncond = LABELLED.conditional_score_fn(sde, 1), LABELLED.score_fn(sde)
    assert torch.equal(sampling.guided_score(cond, uncond, 0.0)(x, t), cond(x, t))
    x_req = x.clone().requires_grad_(True)
    joint = class_log_joint(x_req, 0.5, sde)
    log_cond = joint[:, 1] - math.log(LABELLED.class_probs()[1])  # log p_t(x | 1)
    log_class = joint[:, 1] - torch.logsumexp(joint, 1)  # log p_t(1 | x)
    for w in (1.0, 3.0):
        (expected,) = torch.autograd.grad((log_cond + w * log_class).sum(), x_req,
                                          retain_graph=True)
        torch.testing.assert_close(sampling.guided_score(cond, uncond, w)(x, t), expected)
    classifier = lambda x, t: LABELLED.class_log_prob(x, t, sde)[:, 1]  # noqa: E731
    torch.testing.assert_close(classifier_guided_score(uncond, classifier, 1.0)(x, t), cond(x, t))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_classifier_guidance(sde):
    """classifier_guided_score(s, log p_t(c | x), w) = grad log p_t(x) + w grad log p_t(c | x)
    with the exact noisy classifier, both written here from torch.distributions: w = 1 is the
    exact class-conditional score grad log p_t(x | c) (Song et al. 2021, Eq. 14), per example."""
    x = LABELLED.sample_marginal(sde, 0.5, 6, torch.Generator().manual_seed(7), dtype=torch.float64)
    t = torch.full((6,), 0.5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    classifier = lambda x, t: LABELLED.class_log_prob(x, t, sde).gather(  # noqa: E731
        1, labels[:, None]).squeeze(1)
    x_req = x.clone().requires_grad_(True)
    joint = class_log_joint(x_req, 0.5, sde)  # (B, C)
    log_marginal = torch.logsumexp(joint, 1)
    log_class = joint.gather(1, labels[:, None]).squeeze(1) - log_marginal
    for w in (0.0, 1.0, 3.0):
        (expected,) = torch.autograd.grad((log_marginal + w * log_class).sum(), x_req,
                                          retain_graph=True)
        guided = sampling.classifier_guided_score(LABELLED.score_fn(sde), classifier, w)
        torch.testing.assert_close(guided(x, t), expected)
    (conditional,) = torch.autograd.grad(joint.gather(1, labels[:, None]).sum(), x_req)
    guided = sampling.classifier_guided_score(LABELLED.score_fn(sde), classifier, 1.0)
    torch.testing.assert_close(guided(x, t), conditional)


def test_classifier_guidance_through_the_run_layer_samples_the_class():
    """`sde.runs.sampling.class_score_fn` with a classifier, as `sde.sample classifier=` builds
    it, on the exact unconditional score and the exact noisy classifier: w = 1 samples p(x | c)."""
    from types import SimpleNamespace

    from sde.runs.sampling import class_score_fn

    sde = VPSDE()
    run = SimpleNamespace(score_fn=LABELLED.score_fn(sde), config={}, device=torch.device("cpu"))
    exact_classifier = SimpleNamespace(log_prob_fn=lambda y: lambda x, t: LABELLED.class_log_prob(
        x, t, sde).gather(1, y[:, None]).squeeze(1))
    labels = torch.ones(2000, dtype=torch.long)
    score_fn = class_score_fn(run, labels, 1.0, classifier=exact_classifier)(0, 2000)
    x, _ = sampling.get_sampler("ddim")(sde, score_fn, (2000, 2), steps=50,
                                        generator=torch.Generator().manual_seed(6))
    exact = LABELLED.conditional(1).sample(2000, torch.Generator().manual_seed(5))
    # exact sets of 2000: |ED| < 1.2e-2 (tests/math/conftest.py); measured 1.7e-3, and 1.1 at
    # w = 0 (the unconditional mixture)
    assert energy_distance(x, exact) < 2e-2


def test_guided_score_drives_any_sampler():
    """guided_score is a plain score_fn: DDIM on it at w = 0 samples p(x | c) of the oracle, and
    a larger w moves mass further into class c (p(c | x) grows on average)."""
    sde = VPSDE()
    ddim = sampling.get_sampler("ddim")
    cond, uncond = LABELLED.conditional_score_fn(sde, 1), LABELLED.score_fn(sde)
    g = torch.Generator().manual_seed(5)
    exact = LABELLED.conditional(1).sample(2000, g)
    draws = {}
    for w in (0.0, 2.0):
        draws[w], nfe = ddim(sde, sampling.guided_score(cond, uncond, w), (2000, 2), steps=50,
                             generator=torch.Generator().manual_seed(6))
        assert nfe == 50
    # exact sets of 2000 score |ED| < 1.2e-2 (tests/math/conftest.py); replacing class 1 by the
    # unconditional mixture scores 1.1; measured 1.7e-3
    assert energy_distance(draws[0.0], exact) < 2e-2
    p_class = {w: LABELLED.class_log_prob(x)[:, 1].exp().mean() for w, x in draws.items()}
    assert p_class[2.0] > p_class[0.0] > 0.95 * LABELLED.class_log_prob(exact)[:, 1].exp().mean()

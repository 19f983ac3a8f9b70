"""The autoencoder's losses: hinge, the discriminator's start step, the weighted NLL, LPIPS."""

import math

import pytest
import torch
from torch import nn

from sde.latent import AutoencoderLoss, adaptive_weight, hinge_d_loss, hinge_g_loss, load_lpips
from sde.latent.lpips import LPIPS
from sde.models.autoencoder import AutoencoderKL, DiagonalGaussian


class CountingDiscriminator(nn.Module):
    """Logits = a * mean(x) per image; counts its calls."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(2.0))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.a * x.mean((1, 2, 3)).reshape(-1, 1, 1, 1)


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    x_rec = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    posterior = DiagonalGaussian(torch.randn(3, 2, 2, 2, generator=g))
    return x, x_rec, posterior


def test_hinge_losses_against_hand_values():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3;  relu(1 + fake) = [0, 1, 1.5] -> 2.5/3
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 2.5 / 3))
    assert hinge_g_loss(fake).item() == pytest.approx(1.5 / 3)  # -mean(-2, 0, 0.5)


def test_discriminator_is_used_only_from_its_start_step():
    x, x_rec, posterior = _batch()
    disc = CountingDiscriminator()
    loss_fn = AutoencoderLoss(discriminator=disc, disc_start=10, kl_weight=0.0)
    before, logs = loss_fn.generator_loss(x, x_rec, posterior, step=9)
    d_before, _ = loss_fn.discriminator_loss(x, x_rec, step=9)
    assert disc.calls == 0 and "g_loss" not in logs and d_before.item() == 0.0
    after, logs = loss_fn.generator_loss(x, x_rec, posterior, step=10)
    d_after, _ = loss_fn.discriminator_loss(x, x_rec, step=10)
    assert disc.calls == 3
    g = -(2.0 * x_rec.mean((1, 2, 3))).mean()  # -E D(x_rec) with the fixed a = 2, no last layer
    assert (after - before).item() == pytest.approx(0.5 * g.item(), rel=1e-5)  # disc_weight 0.5
    real, fake = 2.0 * x.mean((1, 2, 3)), 2.0 * x_rec.mean((1, 2, 3))
    expected = 0.5 * ((1 - real).clamp(min=0).mean() + (1 + fake).clamp(min=0).mean())
    assert d_after.item() == pytest.approx(expected.item(), rel=1e-6)


def test_generator_loss_is_ldm_weighted_nll_plus_kl():
    x, x_rec, posterior = _batch()
    loss_fn = AutoencoderLoss(kl_weight=0.01, logvar_init=0.3)
    loss, logs = loss_fn.generator_loss(x, x_rec, posterior, step=0)
    l1_per_image = (x - x_rec).abs().sum((1, 2, 3))
    nll = (l1_per_image / math.exp(0.3) + 0.3 * 16).mean()  # 16 pixels per image
    mean, logvar = posterior.mean, posterior.logvar
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum((1, 2, 3)).mean()
    assert loss.item() == pytest.approx((nll + 0.01 * kl).item(), rel=1e-6)
    assert logs["kl"].item() == pytest.approx(kl.item(), rel=1e-6)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    rec, adv = (w ** 2).sum(), 0.5 * w.sum()  # grads: 2w = (6, 8), norm 10; (0.5, 0.5)
    expected = 10 / (math.sqrt(0.5) + 1e-4)
    assert adaptive_weight(rec, adv, w, disc_weight=1.0).item() == pytest.approx(expected)


def test_adversarial_term_trains_the_decoder_through_last_layer():
    ae = AutoencoderKL(ch=4, ch_mult=(1, 2), num_res_blocks=1, z_channels=2, num_groups=2,
                       in_channels=1)
    loss_fn = AutoencoderLoss(discriminator=CountingDiscriminator(), disc_start=0)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    x_rec, posterior = ae(x)
    loss, logs = loss_fn.generator_loss(x, x_rec, posterior, step=0, last_layer=ae.last_layer)
    loss.backward()
    assert logs["d_weight"].item() > 0 and ae.last_layer.grad is not None


def test_missing_lpips_weights_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        load_lpips(tmp_path / "lpips_vgg.pth")


def test_lpips_reads_a_state_dict_in_the_lpips_layout(tmp_path):
    torch.manual_seed(0)
    state = LPIPS().state_dict()
    state = {k: v.abs() if k.startswith("lin") else v for k, v in state.items()}
    state["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)  # present in lpips' files, ignored
    torch.save(state, tmp_path / "w.pth")
    lpips = load_lpips(tmp_path / "w.pth")
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips(x, x).abs().max().item() < 1e-6
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(d, lpips(y, x))
    torch.save({"lin0.model.1.weight": state["lin0.model.1.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not an LPIPS"):
        load_lpips(tmp_path / "bad.pth")


def test_autoencoder_step_updates_the_discriminator_only_from_its_start():
    from sde.latent.steps import ae_parameters, autoencoder_step
    from sde.models.autoencoder import PatchDiscriminator

    torch.manual_seed(0)
    ae = AutoencoderKL(ch=4, ch_mult=(1, 2), num_res_blocks=1, z_channels=2, num_groups=2,
                       in_channels=1)
    disc = PatchDiscriminator(in_channels=1, ndf=4, n_layers=1)
    loss_fn = AutoencoderLoss(discriminator=disc, disc_start=2)
    opt_ae = torch.optim.SGD(ae_parameters(ae, loss_fn), lr=1e-3)
    opt_disc = torch.optim.SGD(disc.parameters(), lr=1e-1)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    weights = lambda: [p.detach().clone() for p in disc.parameters()]  # noqa: E731
    start = weights()
    for step in range(2):
        logs = autoencoder_step(ae, loss_fn, x, step, opt_ae=opt_ae, opt_disc=opt_disc)
        assert "d_loss" not in logs
    assert all(torch.equal(a, b) for a, b in zip(start, weights()))
    logs = autoencoder_step(ae, loss_fn, x, 2, opt_ae=opt_ae, opt_disc=opt_disc)
    assert "d_loss" in logs and "g_loss" in logs
    assert not all(torch.equal(a, b) for a, b in zip(start, weights()))

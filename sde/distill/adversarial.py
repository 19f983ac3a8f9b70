"""Adversarial diffusion distillation (ADD, Sauer et al. 2023, Sec. 3).

The student x^_theta(x_s, s) denoises data noised to one of its K levels s_i = T (1 - i / K).
Its loss is L = L_adv^G + lambda L_distill (lambda = 2.5, Sec. 4):
- L_distill = E_t [c(t) || x^_theta - x^_psi(alpha_t sg(x^_theta) + std_t z, t) ||^2] with the
  teacher's denoised estimate x^_psi at t ~ U(eps, T) and c(t) = alpha_t^2 (the paper's
  exponential weighting c(t) = alphabar_t);
- hinge adversarial loss (Lim & Ye 2017, as in the paper): the discriminator minimises
  E[max(0, 1 - D(x0))] + E[max(0, 1 + D(x^_theta))], the student minimises -E[D(x^_theta)].
The discriminator is trainable heads on features of a FROZEN network (the paper's DINOv2; here
the teacher's network, or the warm-started one for an oracle teacher, read at t = eps), each head
conditioned on the noise level of the student's input through a sinusoidal embedding (the
conditioning the paper gives its heads). The R1 penalty of the paper is not included.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sde.distill.base import Distiller, per_example_sq
from sde.distill.sampling import renoise
from sde.models import model_time
from sde.models.layers import timestep_embedding
from sde.utils import append_dims, randn_like


class FrozenFeatures(nn.Module):
    """Features of a frozen `net(x, cond)`: the outputs of `layers` (names of its Linear / Conv
    modules), spatially averaged, read by forward hooks; gradients flow to x, never to the net."""

    def __init__(self, net: nn.Module, cond_fn, layers: list[str]):
        super().__init__()
        self.net, self.cond_fn, self.layers = net.eval().requires_grad_(False), cond_fn, layers
        modules = dict(net.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise ValueError(f"feature layers {unknown} are not modules of the network; "
                             f"known: {[n for n in modules if n][:20]}...")
        self._found: dict = {}
        for name in layers:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, inputs, output):
            self._found[name] = output.flatten(2).mean(-1) if output.ndim > 2 else output
        return hook

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in eval mode

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._found = {}
        self.net(x, self.cond_fn(x))
        return [self._found[name] for name in self.layers]  # each (B, C_l)


def x_dependent_layers(net: nn.Module, cond_fn, shape, max_layers: int = 3) -> list[str]:
    """Up to `max_layers` evenly spaced Linear / Conv2d modules whose output depends on x (found
    by a dry run on two random inputs), the network's last layer excluded."""
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    outs: dict = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: outs.setdefault(n, []).append(o))
             for n, m in net.named_modules() if n in names]
    g, device = torch.Generator().manual_seed(0), next(net.parameters()).device
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn((2, *shape), generator=g).to(device)
            net(x, cond_fn(x))
    for h in hooks:
        h.remove()
    varying = [n for n in names if len(outs.get(n, [])) == 2 and not torch.equal(*outs[n])][:-1]
    if not varying:
        raise ValueError("found no layer of the frozen network that depends on x; pass "
                         "feature_layers explicitly")
    pick = torch.linspace(0, len(varying) - 1, min(max_layers, len(varying))).round().long()
    return [varying[i] for i in pick.tolist()]


class Discriminator(nn.Module):
    """D(x, s) = sum_l head_l(F_l(x), emb(s)) (B,): trainable heads on frozen features."""

    def __init__(self, features: FrozenFeatures, dims: list[int], *, hidden: int = 128,
                 emb_dim: int = 64, time_scale: float = 999.0):
        super().__init__()
        self.features, self.emb_dim, self.time_scale = features, emb_dim, time_scale
        self.heads = nn.ModuleList(
            nn.ModuleDict({"feat": nn.Linear(d, hidden), "emb": nn.Linear(emb_dim, hidden),
                           "out": nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                                nn.Linear(hidden, 1))})
            for d in dims)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(self.time_scale * s, self.emb_dim).to(x.dtype)  # (B, E)
        logits = [head["out"](head["feat"](f) + head["emb"](emb)).squeeze(-1)
                  for head, f in zip(self.heads, self.features(x))]
        return torch.stack(logits).sum(0)  # (B,)


def build_discriminator(net: nn.Module, sde, shape, score: dict, *, eps: float = 1e-3,
                        layers: list[str] | None = None, **head_options) -> Discriminator:
    """Heads on a frozen copy of `net` (read as at t = eps with the `get_score_fn` options)."""
    frozen = copy.deepcopy(net).eval().requires_grad_(False)
    opts = {k: score[k] for k in ("time_input", "time_scale", "std") if k in score}

    def cond_fn(x):
        t = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
        return model_time(sde, t, **opts)[0].to(x.dtype)

    device = next(frozen.parameters()).device
    layers = layers or x_dependent_layers(frozen, cond_fn, shape)
    features = FrozenFeatures(frozen, cond_fn, layers)
    with torch.no_grad():
        dims = [f.shape[1] for f in features(torch.zeros((2, *shape), device=device))]
    return Discriminator(features, dims, **head_options).to(device)


def hinge_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))]."""
    return torch.relu(1.0 - d_real).mean() + torch.relu(1.0 + d_fake).mean()


class Adversarial(Distiller):
    """ADD with a K-step student (`student_steps` in 1..4 in the paper; any K >= 1 here)."""

    name = "add"

    def __init__(self, teacher, student, *, steps: int = 1000, student_steps: int = 4,
                 lambda_distill: float = 2.5, disc_lr: float = 1e-3, disc_hidden: int = 128,
                 feature_layers: list[str] | None = None, score: dict | None = None, **kwargs):
        super().__init__(teacher, student, **kwargs)
        if student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {student_steps}")
        self.steps, self.student_steps = int(steps), int(student_steps)
        self.lambda_distill, self.disc_lr = float(lambda_distill), float(disc_lr)
        shape = tuple(teacher.data.shape)
        self.disc = build_discriminator(student.net, self.sde, shape, dict(score or {}),
                                        eps=self.eps, layers=feature_layers, hidden=disc_hidden)
        self.disc_opt = self.make_optimizer(self.disc, lr=disc_lr, betas=(0.0, 0.99))

    @property
    def distill_steps(self) -> int:
        return self.steps

    def on_init_done(self) -> None:
        self.disc.features.net.load_state_dict(self.student.net.state_dict())

    def distill_step(self, x0, k: int, generator) -> dict:
        B, K = x0.shape[0], self.student_steps
        i = torch.randint(0, K, (B,), generator=generator)
        s = (self.sde.T * (1.0 - i.to(torch.float64) / K)).to(x0)  # (B,)
        x_hat = self.train_student(renoise(self.sde, x0, s, generator), s)
        u = torch.rand(B, generator=generator, dtype=torch.float64)
        t = (self.eps + u * (self.sde.T - self.eps)).to(x0)
        alpha, std = self.sde.marginal_coeffs(t)
        with torch.no_grad():
            x_t = append_dims(alpha, x0.ndim) * x_hat + append_dims(std, x0.ndim) * randn_like(
                x0, generator)
            target = self.teacher.denoiser(x_t, t)
        l_distill = (alpha**2 * per_example_sq(x_hat, target)).mean()
        l_adv = -self.disc(x_hat, s).mean()
        self.update(self.opt, self.student, l_adv + self.lambda_distill * l_distill)
        self.ema.update(self.student, k)
        l_disc = hinge_d_loss(self.disc(x0, s), self.disc(x_hat.detach(), s))
        self.update(self.disc_opt, self.disc, l_disc, sync=True)
        return {"loss": l_distill.detach(), "adv_g": l_adv.detach(), "disc": l_disc.detach()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "disc": self.disc.state_dict(),
                "disc_opt": self.disc_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.disc.load_state_dict(state["disc"])
        self.disc_opt.load_state_dict(state["disc_opt"])

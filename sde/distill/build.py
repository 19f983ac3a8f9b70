"""make_distiller: a teacher + a method name + options -> (method object, distilled run config)."""

from __future__ import annotations

import torch

from sde.distill.adversarial import Adversarial
from sde.distill.consistency import Consistency
from sde.distill.progressive import Progressive
from sde.distill.sampling import sample_with_denoiser
from sde.distill.student import Student
from sde.distill.teacher import Teacher

METHODS = {"progressive": Progressive, "consistency": Consistency, "add": Adversarial}
SAMPLING_NOISE = {"progressive": "ddim", "consistency": "fresh", "add": "fresh"}
STUDENT_SCORE = {"prediction": "x0", "time_input": "t", "time_scale": 1.0}


def _student_steps(method: str, options: dict) -> int:
    """The step count the student is distilled for (what `sampler.steps` defaults to)."""
    if method == "consistency":
        return int(options.get("sample_steps", 1))
    return int(options.get("student_steps", 4))


def make_distiller(method: str, teacher: Teacher, *, model: dict | None = None,
                   init_steps: int = 0, eps: float = 1e-3, sigma_data: float = 0.5,
                   lr: float = 1e-4, grad_clip: float = 1.0, ema_decay: float = 0.999,
                   prediction: str | None = None, seed: int = 0, info=None, **options):
    """(the method object, the distilled run's config). `model`: the student network's config
    for an oracle teacher (a run teacher's own network is copied; a fresh one is initialised from
    `seed`, predicting `prediction`: x0 or v; a run teacher's student predicts what the teacher
    does); `options` go to the method."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; choose one of {list(METHODS)}")
    from sde.utils import check_eps

    check_eps(teacher.sde, eps)
    kind = "consistency" if method == "consistency" else "denoiser"
    sample_steps = options.pop("sample_steps", 1) if method == "consistency" else None
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(seed)
        net, net_cfg, score = teacher.student_net(model, prediction)
        student = Student(net, teacher.sde, kind=kind, score=score, eps=eps,
                          sigma_data=sigma_data)
        if info is not None:
            student = student.to(info.device)
        extra = {"score": score} if method == "add" else {}
        distiller = METHODS[method](teacher, student, lr=lr, grad_clip=grad_clip,
                                    ema_decay=ema_decay, init_steps=init_steps, eps=eps,
                                    info=info, **extra, **options)
    steps = sample_steps if method == "consistency" else _student_steps(method, options)
    student_cfg = {"_target_": "sde.distill.student.Student", "net": net_cfg,
                   "sde": teacher.config["sde"], "kind": kind, "score": score, "eps": eps,
                   "sigma_data": sigma_data}
    config = {**{k: v for k, v in teacher.config.items() if k in ("sde", "data", "seed")},
              "experiment": f"distill_{method}", "model": student_cfg, "score": STUDENT_SCORE,
              "sampler": {"name": "distilled", "steps": steps, "noise": SAMPLING_NOISE[method]},
              "distill": {"teacher": teacher.spec, "method": method, "init_steps": init_steps,
                          "eps": eps, "sigma_data": sigma_data, "lr": lr,
                          "prediction": score.get("prediction", "eps"),
                          "grad_clip": grad_clip, "ema_decay": ema_decay, **options,
                          **({"weighting": distiller.weighting} if method == "progressive"
                             else {}),
                          **({"sample_steps": sample_steps} if sample_steps else {}),
                          "teacher_model": teacher.config.get("model"),
                          "teacher_score": teacher.config.get("score")}}
    return distiller, config


def sample_student(student, sde, shape, *, steps: int, noise: str = "ddim", generator=None,
                   device=None):
    """A student (`Student`, x0 = student(x, t)) in `steps` steps -> (x, nfe)."""
    return sample_with_denoiser(sde, student, shape, steps=steps, noise=noise,
                                generator=generator, device=device)

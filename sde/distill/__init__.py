"""Few-step generation by distillation: progressive (Salimans & Ho 2022), consistency (Song et
al. 2023) and adversarial diffusion distillation (Sauer et al. 2023), from any teacher score.

    teacher = load_teacher("oracle:ring")                  # or a run directory
    method, config = make_distiller("progressive", teacher, model=MLP_CONFIG, init_steps=2000)
    distill(method, teacher.data, run_dir=DIR, config=config, settings=DistillSettings())
    x, nfe = sample_student(method.ema.model_ema, teacher.sde, (n, 2), steps=4, noise="ddim")

See docs/distill.md.
"""

from __future__ import annotations

import importlib

from sde.distill.sampling import distilled_sample, sample_with_denoiser, student_grid
from sde.distill.student import Student, student_score_fn
from sde.distill.teacher import Teacher, load_teacher, oracle_teacher, parse_oracle, run_teacher

# The training side (methods, loop, make_distiller) imports sde.training: loaded on first use,
# so that sampling a distilled run (sde.distill.sampling) never imports training code.
_LAZY = {"Adversarial": "adversarial", "Consistency": "consistency", "Progressive": "progressive",
         "Distiller": "base", "DistillSettings": "loop", "distill": "loop",
         "make_distiller": "build", "sample_student": "build", "METHODS": "build",
         "SAMPLING_NOISE": "build"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"sde.distill.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sde.distill' has no attribute {name!r}")


__all__ = ["Adversarial", "Consistency", "Distiller", "DistillSettings", "Progressive",
           "Student", "Teacher", "METHODS", "SAMPLING_NOISE", "distill", "distilled_sample",
           "load_teacher", "make_distiller", "oracle_teacher", "parse_oracle", "run_teacher",
           "sample_student", "sample_with_denoiser", "student_grid", "student_score_fn"]

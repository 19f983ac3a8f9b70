"""Everything that reads or writes a run directory, as a library (see docs/runs.md).

    load_run(path, ema=True, device=None) -> Run          sde.runs.load
    load_classifier(path, ema=True, device=None)          sde.runs.load (task: classifier)
    sample_run(run, sampler="pc", n=64, seed=0, ...)      sde.runs.sampling
    evaluate_run(run, metrics=[...], n=1000, ...)         sde.runs.evaluate
    checkpoints, metrics.json, figures, paths             sde.runs.{checkpoint,metrics,figures,paths}

Inference (this package, `sde.sample`, `sde.evaluate`) never imports `sde.training`.
"""

from sde.runs.load import Classifier, Run, load_classifier, load_run

__all__ = ["Run", "load_run", "Classifier", "load_classifier", "sample_run", "evaluate_run", "EvalOptions"]


def __getattr__(name):
    if name == "sample_run":
        from sde.runs.sampling import sample_run

        return sample_run
    if name in ("evaluate_run", "EvalOptions"):
        from sde.runs import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'sde.runs' has no attribute {name!r}")

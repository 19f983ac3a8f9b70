"""Class accuracy of guided digits samples per guidance weight, measured by sde.metrics.digits'
classifier (trained on the real digits), and the feature distance to the test digits.

    python benchmarks/cfg_digits_accuracy.py RUN_DIR [per_class] [steps] [w1,w2,...]
    python benchmarks/cfg_digits_accuracy.py RUN_DIR ... --classifier CLF_DIR [--device cuda]

Without --classifier, RUN_DIR is a class-conditional run (experiment=vp_digits_cond) sampled with
classifier-free guidance, s = (1 + w) s(x | c) - w s(x) (w = 0: the conditional score). With
--classifier (experiment=classifier_digits), RUN_DIR is any digits run with the classifier's
SDE (e.g. vp_digits) sampled with classifier guidance, s = s(x) + w grad log p_t(c | x).
"""

import argparse
import time

from sde.metrics import digits
from sde.runs.load import load_classifier, load_run
from sde.runs.sampling import check_classifier, draw_samples, parse_labels


def main(run_dir, per_class=10, steps=100, weights=(0, 1, 2, 3, 4), classifier=None, device=None):
    run = load_run(run_dir, device=device)
    num_classes = getattr(run.model, "num_classes", None)
    kind = "classifier-free guidance"
    if classifier is not None:
        classifier = load_classifier(classifier, device=device)
        check_classifier(run, classifier)
        num_classes, kind = classifier.num_classes, f"classifier guidance ({classifier.path})"
    n = 10 * per_class
    labels = parse_labels("all", n, num_classes)
    x_real, _ = digits.real_digits(train=False)
    print(f"run {run_dir} (step {run.step}), {kind}, n={n} ({per_class} per class), "
          f"pc steps={steps}")
    print("| guidance | accuracy | feature distance to test digits | seconds |")
    print("|---|---|---|---|")
    for w in weights:
        tic = time.perf_counter()
        x, *_ = draw_samples(run, sampler="pc", sampler_options={"steps": steps}, n=n,
                             batch_size=n, labels=labels, guidance=float(w), progress=False,
                             classifier=classifier, device=run.device)
        x = 2 * x - 1  # [0, 1] -> the classifier's [-1, 1]
        acc = digits.accuracy(x, labels)
        fd = digits.feature_distance(x, x_real)
        print(f"| {w:g} | {acc:.3f} | {fd:.2f} | {time.perf_counter() - tic:.0f} |", flush=True)


def _args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("per_class", nargs="?", type=int, default=10)
    parser.add_argument("steps", nargs="?", type=int, default=100)
    parser.add_argument("weights", nargs="?", default="0,1,2,3,4", help="comma-separated")
    parser.add_argument("--classifier", default=None, help="a classifier_digits run")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return parser.parse_args()


if __name__ == "__main__":
    a = _args()
    main(a.run_dir, a.per_class, a.steps, tuple(float(w) for w in a.weights.split(",")),
         classifier=a.classifier, device=a.device)

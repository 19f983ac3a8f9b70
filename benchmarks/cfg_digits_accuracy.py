"""Class accuracy of a class-conditional digits run per classifier-free guidance weight, measured
by sde.metrics.digits' classifier (trained on the real digits).

    python benchmarks/cfg_digits_accuracy.py RUN_DIR [per_class] [steps] [w1,w2,...]
"""

import sys
import time

from sde.metrics import digits
from sde.runs.load import load_run
from sde.runs.sampling import draw_samples, parse_labels


def main(run_dir, per_class=10, steps=100, weights=(0, 1, 2, 3, 4)):
    run = load_run(run_dir, device="cpu")
    n = 10 * per_class
    labels = parse_labels("all", n, run.model.num_classes)
    x_real, _ = digits.real_digits(train=False)
    print(f"run {run_dir} (step {run.step}), n={n} ({per_class} per class), pc steps={steps}")
    print("| guidance | accuracy | feature distance to test digits | seconds |")
    print("|---|---|---|---|")
    for w in weights:
        tic = time.perf_counter()
        x, *_ = draw_samples(run, sampler="pc", sampler_options={"steps": steps}, n=n,
                             batch_size=n, labels=labels, guidance=float(w), progress=False)
        x = 2 * x - 1  # [0, 1] -> the classifier's [-1, 1]
        acc = digits.accuracy(x, labels)
        fd = digits.feature_distance(x, x_real)
        print(f"| {w:g} | {acc:.3f} | {fd:.2f} | {time.perf_counter() - tic:.0f} |", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], *(int(a) for a in args[1:3]),
         *([tuple(float(w) for w in args[3].split(","))] if len(args) > 3 else []))

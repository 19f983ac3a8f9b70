"""Fast samplers on a trained digits run (issue 16's digits row): for each sampler x grid and NFE,
the digits classifier's feature distance (`sde.metrics.digits.feature_distance`, a Frechet
distance in its 64 penultimate features) between n samples and the 297 held-out test digits,
mean over seeds. The floor is the same distance for n real training digits (a fresh subset per
seed), so a perfect model scores the floor.

    python benchmarks/bench_digits_samplers.py RUN [--n 500] [--seeds 8] [--fit run|cheap]

RUN is a trained `vp_digits` run (`make train`); copy it first if it is shared, since the
optimised grids are stored in RUN/grids/. A cell of the summary is the fewest NFE from which
every larger budget is within 20 % of the converged distance (the row's own at the largest
budget; for optimised grids, which are fitted only up to --optimized-nfe, the same sampler's on
the logSNR grid at the largest budget), and the same within 2.5x the floor as well.

Seeds run one after the other, every row and budget per seed, and the tables so far are printed
(and written to --json) after each, so a run stopped early still gives a table over fewer seeds.

Optimised grids, fitted once per budget and stored in RUN/grids/: `--fit run` is what
`sampler.grid=optimized` does on the command line (`with_stored_grid`: 256 training digits,
4 sweeps x 12 iterations); `--fit cheap` fits on 64 training digits with 2 sweeps x 8
iterations, about 11x cheaper, for CPUs (files `bench_cheap_*.json`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sde import load_run
from sde.metrics.digits import feature_distance, real_digits
from sde.runs.paths import run_dir_of
from sde.runs.sampling import draw_samples, with_stored_grid

# label: (sampler, options), every one with nfe = steps: the published default and the old best
# (DPM-Solver++ 2M / 3M), and the two recommended few-step samplers on both grids (a subset of
# the mixtures' rows, to fit a CPU)
CONFIGS = {
    "dpm_solver_pp-2M, logsnr": ("dpm_solver_pp", {"grid": "logsnr", "order": 2}),
    "dpm_solver_pp-3M, logsnr": ("dpm_solver_pp", {"grid": "logsnr", "order": 3}),
    "unipc-bh2-2, logsnr": ("unipc", {"grid": "logsnr", "variant": "bh2", "order": 2}),
    "unipc-bh2-2, optimized": ("unipc", {"grid": "optimized", "variant": "bh2", "order": 2}),
    "ipndm-4, logsnr": ("deis", {"grid": "logsnr", "variant": "ipndm", "order": 4}),
    "ipndm-4, optimized": ("deis", {"grid": "optimized", "variant": "ipndm", "order": 4}),
}
REL, CAP = 0.2, 2.5  # within 20 % of the converged distance, within 2.5x the floor


def fit_grid(run, steps: int, fit: str) -> list[float]:
    """The optimised grid of `steps` times for the run: the command line's stored grid
    (`fit="run"`) or a cheaper fit on 64 training digits (`fit="cheap"`), stored next to it."""
    if fit == "run":
        return with_stored_grid(run, {"grid": "optimized", "steps": steps})["times"]
    from sde.runs.files import write_json
    from sde.sampling import optimize_grid

    path = run_dir_of(run.path) / "grids" / f"bench_cheap_steps{steps}_eps0.001_step{run.step}.json"
    if path.is_file():
        return json.loads(path.read_text())["times"]
    x0, _ = real_digits(train=True)  # model space [-1, 1]
    times = optimize_grid(run.sde, run.score_fn, steps, x0[:64], sweeps=2, iters=8,
                          generator=torch.Generator().manual_seed(0)).tolist()
    write_json(path, {"steps": steps, "examples": 64, "sweeps": 2, "iters": 8, "times": times})
    return times


def fewest_nfe(points: list[tuple[int, float]], converged: float, cap: float | None):
    """Fewest NFE from which every budget of `points` (nfe, distance) is <= (1 + REL) converged
    (and <= cap, unless None); None if not even the largest budget is."""
    best = None
    for nfe, d in reversed(points):
        if d > (1 + REL) * converged or (cap is not None and d > cap):
            break
        best = nfe
    return best


def floor_distance(n: int, seed: int, test: torch.Tensor) -> float:
    """The distance between n real training digits (a random subset per seed) and the test
    digits."""
    train, _ = real_digits(train=True)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return feature_distance(train[idx], test)


def distance(run, name, options, steps, n, seed, test) -> float:
    """The distance to the test digits of n samples of seed `seed`."""
    x, _, nfe, _ = draw_samples(run, sampler=name, sampler_options={**options, "steps": steps},
                                n=n, seed=seed, batch_size=n, progress=False)
    assert nfe == steps, (name, nfe, steps)
    return feature_distance(2 * x - 1, test)  # data space [0, 1] -> [-1, 1]


def stats(values: list[float]) -> dict:
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": v.mean().item(), "std": v.std().item() if len(v) > 1 else 0.0}


def table(per_seed: dict, budgets: list[int], floors: list[float]) -> str:
    """Markdown: mean distance per sampler x grid and NFE, then the fewest-NFE summary."""
    floor = stats(floors)["mean"]
    rows = {label: {b: stats(v) for b, v in cells.items()} for label, cells in per_seed.items()}
    lines = [f"mean over {len(floors)} seeds; floor {floor:.2f}", "",
             "| sampler, grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{cells[b]['mean']:.2f}" if b in cells else "-" for b in budgets) + " |")
    lines += ["", f"| sampler, grid | converged (NFE {max(budgets)}, +- std over seeds) | fewest "
              f"NFE within 20 % | and within {CAP}x the floor ({CAP * floor:.1f}) |",
              "|---|---|---|---|"]
    for label, cells in rows.items():
        own = max(budgets) in cells
        top = (cells if own else rows[label.split(",")[0] + ", logsnr"])[max(budgets)]
        points = [(b, cells[b]["mean"]) for b in budgets if b in cells]
        loose = fewest_nfe(points, top["mean"], None)
        tight = fewest_nfe(points, top["mean"], CAP * floor)
        lines.append(f"| {label} | {top['mean']:.2f} +- {top['std']:.2f}{'' if own else ' (logsnr)'}"
                     f" | {loose or '-'} | {tight or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=500, help="samples per seed")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--nfe", default="5,6,8,10,12,16,24,50")
    parser.add_argument("--optimized-nfe", default="6,8,10,12",
                        help="budgets of the optimised-grid rows (one fit per budget)")
    parser.add_argument("--fit", choices=("run", "cheap"), default="run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    run = load_run(args.run, device="cpu")
    test, _ = real_digits(train=False)
    budgets = [int(v) for v in args.nfe.split(",")]
    fitted = [int(v) for v in args.optimized_nfe.split(",")]
    print(f"run {args.run} (step {run.step}); n = {args.n}", flush=True)
    grids = {}
    for steps in fitted:
        tic = time.perf_counter()
        grids[steps] = fit_grid(run, steps, args.fit)
        print(f"optimised grid, {steps} steps ({args.fit} fit, {time.perf_counter() - tic:.0f} s):"
              f" {[round(t, 4) for t in grids[steps]]}", flush=True)
    floors, per_seed = [], {label: {} for label in CONFIGS}
    for seed in range(args.seeds):
        floors.append(floor_distance(args.n, seed, test))
        for label, (name, options) in CONFIGS.items():
            optimized = options["grid"] == "optimized"
            for steps in fitted if optimized else budgets:
                extra = {"times": grids[steps]} if optimized else {}
                d = distance(run, name, {**options, **extra}, steps, args.n, seed, test)
                per_seed[label].setdefault(steps, []).append(d)
        print(f"\nseed {seed} done ({time.perf_counter() - start:.0f} s so far)\n"
              + table(per_seed, budgets, floors), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"floors": floors, "per_seed": per_seed,
                                                   "grids": grids, "args": vars(args)},
                                                  indent=1))


if __name__ == "__main__":
    main()

"""Sampler benchmark on exact scores: two-sample distance to exact samples against NFE.

Every sampler of `sde.sampling.get_sampler` runs on the closed-form score of a Gaussian mixture
(`sde.oracle.GaussianMixture`), a 2-D ring and a 16-D random mixture, under VP and VE. A run
draws `chunks` x `n` samples; the distance is the (unbiased) squared energy distance ED between
each chunk of n and its own fresh set of n exact samples, averaged over the chunks (so its noise
shrinks like 1 / sqrt(chunks)). The "floor" is what two exact sets of n samples score: ED is
unbiased, so exact sets average zero, and the floor is the mean |ED| over `--floor-pairs` pairs
of exact sets. Table cells are ED / floor; the row "exact" is an exact sampler scored the same
way (its spread shows the noise). The NFE each sampler needs to reach twice the floor is the
smallest budget from which on every larger budget stays <= 2 floor.

    python benchmarks/bench_samplers.py [--n 1000] [--chunks 5] [--plot runs/bench/samplers.png]
    python benchmarks/bench_samplers.py --fewest [--n 2000] [--seeds 8]   # issue 16's table
    python benchmarks/bench_samplers.py --final-step [--n 1000] [--seeds 8]   # its final step

`--fewest`: four mixtures (2-D / 16-D, broad / tight and faint modes) under VP and VE; for each
sampler x grid (UniPC, DEIS, DPM-Solver++, with the optimised "Align Your Steps" grid), the mean
over seeds of ED / floor at every budget, the fewest NFE within 20 % of the converged error and
2.5x the floor, and a comparison of final-step choices (`--final-step`: that comparison alone).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from sde import VESDE, VPSDE
from sde.metrics.two_sample import energy_distance
from sde.oracle import GaussianMixture
from sde.sampling.optimal_grid import optimize_grid
from sde.sampling.registry import get_sampler

BUDGETS = (4, 6, 8, 10, 12, 16, 24, 32, 64, 128)
QUICK_BUDGETS = (4, 8, 12, 32)

# label -> (registry name, options, steps for an NFE budget: the largest with nfe <= budget)
FIXED = {
    "pc (rev. diffusion)": ("pc", {"corrector": "none"}, lambda b: b),
    "pc (rd + langevin)": ("pc", {}, lambda b: b // 2),
    "ddim": ("ddim", {}, lambda b: b),
    "ddim eta=1": ("ddim", {"eta": 1.0}, lambda b: b),
    "heun": ("heun", {}, lambda b: (b + 1) // 2),
    "dpm_solver-2": ("dpm_solver", {"order": 2}, lambda b: (b - 1) // 2 + 1),
    "dpm_solver-3": ("dpm_solver", {"order": 3}, lambda b: (b - 1) // 3 + 1),
    "dpm_solver_pp-2M": ("dpm_solver_pp", {"order": 2}, lambda b: b),
    "dpm_solver_pp-3M": ("dpm_solver_pp", {"order": 3}, lambda b: b),
}
# label -> (registry name, [options per setting]); these choose their own steps
TOLERANCE = {
    "ode (dopri5)": ("ode", [{"rtol": r, "atol": r} for r in (1e-2, 1e-3, 1e-5)]),
    "adaptive (GGF)": ("adaptive", [{"rtol": r, "atol": r / 4} for r in (0.2, 0.1, 0.05)]),
}
GRID_SAMPLERS, GRID_BUDGETS = ("dpm_solver_pp-2M", "dpm_solver_pp-3M", "heun"), (8, 12)


def problems(quick: bool) -> dict:
    """The data sets: a 2-D ring of 8 modes and a centred 16-D mixture of 6 modes."""
    mix = GaussianMixture.random(6, (4,) if quick else (16,), spread=1.0, std=(0.1, 0.5), seed=1)
    centred = GaussianMixture(mix.means - (mix.weights[:, None] * mix.means).sum(0), mix.stds,
                              mix.weights)
    return {"ring 2-D": GaussianMixture.ring(8, radius=2.0, std=0.2),
            f"mixture {centred.event_shape[0]}-D": centred}


class Scorer:
    """ED / floor of a sample set of chunks x n, against fixed fresh exact chunks."""

    def __init__(self, mixture, n, chunks, floor_pairs, seed):
        g = torch.Generator().manual_seed(seed)
        self.n, self.chunks = n, chunks
        self.refs = [mixture.sample(n, g) for _ in range(chunks)]
        self.floor = sum(abs(energy_distance(mixture.sample(n, g), mixture.sample(n, g)))
                         for _ in range(floor_pairs)) / floor_pairs
        self.exact = self(mixture.sample(n * chunks, g))

    def __call__(self, x) -> float:
        parts = x.reshape(self.chunks, self.n, -1)
        mean_ed = sum(energy_distance(p, r) for p, r in zip(parts, self.refs)) / self.chunks
        return mean_ed / self.floor


def run_sampler(name, sde, mixture, batch, seed, steps=None, options=None):
    """Samples (batch, D) and true NFE of one sampler run (NaN samples where the sampler refuses
    the budget, e.g. pc on VP with N <= beta_max)."""
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(options or {})
    if steps is not None:
        kwargs["steps"] = steps
    try:
        return get_sampler(name)(sde, mixture.score_fn(sde), (batch, *mixture.event_shape),
                                 generator=generator, **kwargs)
    except ValueError as e:
        if "discrete chain" not in str(e):
            raise
        return torch.full((batch, *mixture.event_shape), float("nan")), steps or 0


def bench_block(sde, mixture, args, budgets) -> dict:
    """All samplers on one (SDE, data) pair -> {"floor", "exact", "rows", "grids"}; rows and
    grids hold sorted (nfe, ED / floor) pairs."""
    scorer = Scorer(mixture, args.n, args.chunks, args.floor_pairs, args.seed)
    batch, seed = args.n * args.chunks, args.seed + 1

    def fixed(label, budget, **extra):
        name, options, steps_for = FIXED[label]
        options = {**options, **extra}
        x, nfe = run_sampler(name, sde, mixture, batch, seed, steps_for(budget), options)
        return nfe, scorer(x)

    rows = {label: sorted({FIXED[label][2](b): fixed(label, b) for b in budgets
                           if FIXED[label][2](b) >= 1}.values()) for label in FIXED}
    for label, (name, settings) in TOLERANCE.items():
        runs = [run_sampler(name, sde, mixture, batch, seed, None, s)
                for s in (settings[:2] if args.quick else settings)]
        rows[label] = sorted((nfe, scorer(x)) for x, nfe in runs)
    grids = {f"{label}, {grid}": [fixed(label, b, grid=grid) for b in GRID_BUDGETS]
             for label in GRID_SAMPLERS for grid in ("uniform", "logsnr", "edm", "quadratic")}
    return {"floor": scorer.floor, "exact": scorer.exact, "rows": rows, "grids": grids}


def nfe_to_reach(points, level=2.0):
    """Smallest NFE from which on every run stays <= level (None if never)."""
    best = None
    for nfe, ratio in reversed(points):
        if not ratio <= level:  # nan (a diverged run) fails too
            break
        best = nfe
    return best


def fmt(r: float) -> str:
    return f"{r:.2g}" if abs(r) < 100 else f"{r:.0f}" if abs(r) < 1e4 else f"{r:.0e}"


def print_block(title, result, budgets):
    print(f"\n### {title}\n\nfloor (mean |ED| of two exact sets) = {result['floor']:.2e}; "
          f"an exact sampler scores {fmt(result['exact'])}. Cells: ED / floor "
          f"(true NFE in brackets where it is below the column's budget).\n")
    print("| sampler | " + " | ".join(f"{b}" for b in budgets) + " | NFE to 2x floor |")
    print("|" + "---|" * (len(budgets) + 2))
    for label, points in result["rows"].items():
        if label in TOLERANCE:
            continue
        cells = {min(b for b in budgets if b >= nfe): (nfe, r) for nfe, r in points}
        row = [fmt(cells[b][1]) + ("" if cells[b][0] == b else f" ({cells[b][0]})")
               if b in cells else "" for b in budgets]
        print(f"| {label} | " + " | ".join(row) + f" | {nfe_to_reach(points) or '-'} |")
    print("\n| sampler (tolerance sweep) | ED / floor @ NFE | NFE to 2x floor |\n|---|---|---|")
    for label in TOLERANCE:
        points = result["rows"][label]
        cells = ", ".join(f"{fmt(r)} @ {nfe}" for nfe, r in points)
        print(f"| {label} | {cells} | {nfe_to_reach(points) or '-'} |")
    print("\n| grid comparison | " + " | ".join(f"NFE ~{b}" for b in GRID_BUDGETS)
          + " |\n|---|" + "---|" * len(GRID_BUDGETS))
    for label, points in result["grids"].items():
        print(f"| {label} | " + " | ".join(f"{fmt(r)} ({nfe})" for nfe, r in points) + " |")


def print_summary(results):
    summary = {t: {label: nfe_to_reach(p) for label, p in r["rows"].items()}
               for t, r in results.items()}
    print("\n### NFE to reach twice the floor\n")
    print("| sampler | " + " | ".join(summary) + " |")
    print("|" + "---|" * (len(summary) + 1))
    for label in next(iter(summary.values())):
        print(f"| {label} | " + " | ".join(str(s[label] or "-") for s in summary.values()) + " |")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    rows = (len(results) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    for ax, (title, result) in zip(axes.flat, results.items()):
        for i, (label, points) in enumerate(result["rows"].items()):
            ratio = [max(r, 0.1) if r == r else float("nan") for _, r in points]
            ax.plot([nfe for nfe, _ in points], ratio, marker="o", ms=3, label=label,
                    color=plt.cm.tab20(i / 20), ls="-" if label in FIXED else "--")
        ax.axhline(1.0, color="k", lw=1, ls="--", label="floor")
        ax.axhline(2.0, color="k", lw=1, ls=":", label="2 x floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="ED / floor (clipped at 0.1)",
               title=title)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- fewest steps (issue 16): NFE to converge, mean over seeds, optimised grids -----------------

FEWEST_BUDGETS = (4, 5, 6, 8, 10, 12, 16, 24, 50)
FINAL_BUDGETS = (5, 6, 8, 12, 50)
# label -> (registry name, options, grid); every one of these has nfe = steps
FEWEST = {
    "dpm_solver_pp-2M, logsnr": ("dpm_solver_pp", {"order": 2}, "logsnr"),
    "dpm_solver_pp-3M, logsnr": ("dpm_solver_pp", {"order": 3}, "logsnr"),
    "dpm_solver_pp-3M, optimized": ("dpm_solver_pp", {"order": 3}, "optimized"),
    "unipc-bh1-2, logsnr": ("unipc", {"order": 2, "variant": "bh1"}, "logsnr"),
    "unipc-bh2-2, logsnr": ("unipc", {"order": 2, "variant": "bh2"}, "logsnr"),
    "unipc-bh2-2, optimized": ("unipc", {"order": 2, "variant": "bh2"}, "optimized"),
    "unipc-bh2-3, logsnr": ("unipc", {"order": 3, "variant": "bh2"}, "logsnr"),
    "unipc-bh2-3, optimized": ("unipc", {"order": 3, "variant": "bh2"}, "optimized"),
    "deis-3, logsnr": ("deis", {"order": 3}, "logsnr"),
    "deis-3, optimized": ("deis", {"order": 3}, "optimized"),
    "ipndm-4, logsnr": ("deis", {"order": 4, "variant": "ipndm"}, "logsnr"),
    "ipndm-4, optimized": ("deis", {"order": 4, "variant": "ipndm"}, "optimized"),
    "ipndm-4, logsnr, eps=1e-2": ("deis", {"order": 4, "variant": "ipndm", "eps": 1e-2},
                                  "logsnr"),
    "unipc-bh2-2, optimized, eps=1e-2": ("unipc", {"order": 2, "variant": "bh2", "eps": 1e-2},
                                         "optimized"),
}
# final-step variants of unipc-bh2-3 on the logSNR grid, all at nfe = steps
FINAL_STEP = {
    "Tweedie at eps = 1e-3, lower-order last steps (default)": {},
    "no Tweedie: the last step lands on eps = 1e-3 (denoise_to_zero=False)":
        {"denoise_to_zero": False},
    "Tweedie at eps = 1e-3, full order to the end": {"lower_order_final": False},
    "clipped last sigma: eps = 1e-2, lower-order last steps": {"eps": 1e-2},
    "clipped last sigma: eps = 3e-2, lower-order last steps": {"eps": 3e-2},
    "clipped last sigma: eps = 1e-2, full order to the end": {"eps": 1e-2,
                                                              "lower_order_final": False},
}


def fewest_problems() -> dict:
    """Four mixtures: 2-D and 16-D, broad, and with tight plus faint modes."""
    ring = GaussianMixture.ring(8, radius=2.0, std=0.2)
    angles = torch.arange(6, dtype=torch.float64) * (2 * torch.pi / 6)
    tight = GaussianMixture(torch.stack([2 * angles.cos(), 2 * angles.sin()], 1),
                            [0.02, 0.3, 0.05, 0.3, 0.02, 0.6], [0.3, 0.2, 0.2, 0.2, 0.08, 0.02])
    broad = GaussianMixture.random(6, (16,), spread=1.0, std=(0.1, 0.5), seed=1)
    faint = GaussianMixture.random(5, (16,), spread=1.0, std=(0.02, 0.3), seed=2)
    faint = GaussianMixture(faint.means, faint.stds, [0.4, 0.3, 0.2, 0.07, 0.03])
    return {"ring 2-D": ring, "tight+faint 2-D": tight, "mixture 16-D": broad,
            "tight+faint 16-D": faint}


def fewest_block(sde, mixture, args) -> dict:
    """Mean over seeds of ED / floor for every FEWEST sampler at every budget, and the final-step
    table. The optimised grid is computed once per budget from 128 exact samples (seeded; 3 sweeps
of 10 golden-section iterations)."""
    n, seeds = args.n, range(args.seeds)
    g = torch.Generator().manual_seed(args.seed)
    refs = [mixture.sample(n, g) for _ in seeds]
    floor = sum(abs(energy_distance(mixture.sample(n, g), mixture.sample(n, g)))
                for _ in range(2 * args.seeds)) / (2 * args.seeds)
    score_fn = mixture.score_fn(sde)
    x0 = mixture.sample(128, torch.Generator().manual_seed(args.seed + 7), dtype=torch.float64)
    times, opt_seconds = {}, []

    def grid_times(steps, eps):
        if (steps, eps) not in times:
            t0 = time.time()
            times[steps, eps] = optimize_grid(sde, score_fn, steps, x0, eps=eps, sweeps=3,
                                              iters=10, generator=torch.Generator().manual_seed(1))
            opt_seconds.append(time.time() - t0)
        return times[steps, eps]

    def mean_ratio(name, options, grid, steps) -> float:
        extra = {"times": grid_times(steps, options.get("eps", 1e-3))} if grid == "optimized" else {}
        eds = []
        for s, ref in zip(seeds, refs):
            x, nfe = get_sampler(name)(sde, score_fn, (n, *mixture.event_shape), steps=steps,
                                       grid=grid, generator=torch.Generator().manual_seed(100 + s),
                                       **options, **extra)
            assert nfe == steps
            eds.append(energy_distance(x, ref))
        return sum(eds) / len(eds) / floor

    rows = {} if args.final_step else {
        label: [(b, mean_ratio(name, o, grid, b)) for b in FEWEST_BUDGETS]
        for label, (name, o, grid) in FEWEST.items()}
    final = {label: [(b, mean_ratio("unipc", {"order": 3, **o}, "logsnr", b))
                     for b in FINAL_BUDGETS] for label, o in FINAL_STEP.items()}
    return {"floor": floor, "rows": rows, "final": final,
            "optimize_seconds": sum(opt_seconds) / max(len(opt_seconds), 1)}


def converged_nfe(points, *, rel=0.2, cap=2.5):
    """Fewest NFE from which on every budget is within `rel` of the converged (largest-budget)
    error and within `cap` x the floor. Errors are ED / floor, which is unbiased (an exact
    sampler averages 0), so "within 20 %" is taken as r <= r_conv + rel max(|r_conv|, 1)."""
    r_conv = points[-1][1]
    best = None
    for nfe, r in reversed(points):
        if not (r <= cap and r <= r_conv + rel * max(abs(r_conv), 1.0)):
            break
        best = nfe
    return best


def print_fewest(results):
    titles = list(results)
    if not results[titles[0]]["rows"]:  # --final-step
        return print_final(results)
    print("\n### Fewest NFE within 20 % of the converged error and 2.5x the floor "
          "(mean over seeds)\n")
    print("| sampler, grid | " + " | ".join(titles) + " |")
    print("|" + "---|" * (len(titles) + 1))
    for label in FEWEST:
        cells = [str(converged_nfe(results[t]["rows"][label]) or "> 50") for t in titles]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n| ED / floor at 50 NFE | " + " | ".join(titles) + " |")
    print("|" + "---|" * (len(titles) + 1))
    for label in FEWEST:
        print(f"| {label} | " + " | ".join(fmt(results[t]["rows"][label][-1][1])
                                          for t in titles) + " |")
    for t in titles:
        r = results[t]
        print(f"\n#### {t}: ED / floor by NFE (floor {r['floor']:.2e}; optimize_grid "
              f"{r['optimize_seconds']:.1f} s per budget)\n")
        print("| sampler, grid | " + " | ".join(map(str, FEWEST_BUDGETS)) + " |")
        print("|" + "---|" * (len(FEWEST_BUDGETS) + 1))
        for label, points in r["rows"].items():
            print(f"| {label} | " + " | ".join(fmt(v) for _, v in points) + " |")
        print_final({t: r})


def print_final(results):
    """The final-step tables: ED / floor of unipc-bh2-3 (logSNR grid) per variant and NFE."""
    for t, r in results.items():
        print(f"\n| final step (unipc-bh2-3, logsnr), {t} | "
              + " | ".join(map(str, FINAL_BUDGETS)) + " |")
        print("|" + "---|" * (len(FINAL_BUDGETS) + 1))
        for label, points in r["final"].items():
            print(f"| {label} | " + " | ".join(fmt(v) for _, v in points) + " |")


def main_fewest(args):
    start, results = time.time(), {}
    for data_name, mixture in fewest_problems().items():
        for sde in (VPSDE(), VESDE()):
            title = f"{data_name}, {'VP' if isinstance(sde, VPSDE) else 'VE'}"
            results[title] = fewest_block(sde, mixture, args)
            print(f"({title}: {time.time() - start:.0f} s so far)", flush=True)
            print_fewest({title: results[title]})
    print_fewest(results)
    print(f"\nn = {args.n} samples x {args.seeds} seeds; {time.time() - start:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per set")
    parser.add_argument("--chunks", type=int, default=5, help="sets of n per sampler run")
    parser.add_argument("--floor-pairs", type=int, default=32, help="exact pairs for the floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="runs/bench/samplers.png", help="PNG to write")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for these small batches)")
    parser.add_argument("--fewest", action="store_true",
                        help="issue-16 table: fewest NFE to converge (UniPC, DEIS, optimised grids)")
    parser.add_argument("--seeds", type=int, default=8, help="seeds per cell (--fewest)")
    parser.add_argument("--final-step", action="store_true",
                        help="only the final-step comparison of --fewest")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.fewest or args.final_step:
        return main_fewest(args)
    # pc on VP at N <= beta_max = 20 steps breaks the DDPM chain (NaN in the table, by design)
    warnings.filterwarnings("ignore", message="the discrete chain needs")
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    start, results = time.time(), {}
    for data_name, mixture in problems(args.quick).items():
        for sde in (VPSDE(), VESDE()):
            title = f"{data_name}, {type(sde).__name__}"
            results[title] = bench_block(sde, mixture, args, budgets)
            print_block(title, results[title], budgets)
            print(f"({time.time() - start:.0f} s so far)", flush=True)
    print_summary(results)
    plot(results, args.plot)
    print(f"\nplot: {args.plot}; n = {args.n} x {args.chunks} chunks; {time.time() - start:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

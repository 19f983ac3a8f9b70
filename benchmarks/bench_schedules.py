"""Samplers across noise schedules: the NFE each sampler needs to come within 2x the exact-sample
floor, per SDE (linear VP, cosine, zero-SNR VP, VE, EDM's VE range), on exact scores.

Reuses `bench_samplers.py`'s machinery (the scorer, the sampler budgets, `nfe_to_reach`): every
sampler runs on the closed-form score of a Gaussian mixture, and a cell is the smallest NFE from
which on every larger budget the energy distance to exact samples stays <= 2 x the floor (the
mean |ED| of two exact sets). "-" means never within the budgets (up to 128).

    python benchmarks/bench_schedules.py [--n 500] [--chunks 4] [--data ring|mixture]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_samplers import BUDGETS, QUICK_BUDGETS, bench_block, nfe_to_reach, problems  # noqa: E402

from sde import VESDE, VPSDE, CosineVPSDE  # noqa: E402


def schedules() -> dict:
    """The SDEs compared: column name -> SDE."""
    return {"linear VP": VPSDE(), "cosine": CosineVPSDE(),
            "zero-SNR VP": VPSDE(zero_terminal_snr=True), "VE": VESDE(),
            "EDM (VE 0.002-80)": VESDE(sigma_min=0.002, sigma_max=80.0)}


def print_table(summary: dict) -> None:
    print("| sampler | " + " | ".join(summary) + " |")
    print("|" + "---|" * (len(summary) + 1))
    for label in next(iter(summary.values())):
        print(f"| {label} | " + " | ".join(str(s[label] or "-") for s in summary.values()) + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="samples per set")
    parser.add_argument("--chunks", type=int, default=4, help="sets of n per sampler run")
    parser.add_argument("--floor-pairs", type=int, default=16, help="exact pairs for the floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=("ring", "mixture"), default="ring")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the discrete chain needs")
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    data_name, mixture = list(problems(args.quick).items())[0 if args.data == "ring" else 1]
    start, summary, results = time.time(), {}, {}
    for name, sde in schedules().items():
        results[name] = bench_block(sde, mixture, args, budgets)
        summary[name] = {label: nfe_to_reach(p) for label, p in results[name]["rows"].items()}
        print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    print(f"\n### NFE to 2x the exact-sample floor, {data_name}, per SDE "
          f"(n = {args.n} x {args.chunks})\n")
    print_table(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return summary


if __name__ == "__main__":
    main()

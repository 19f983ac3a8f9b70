"""Inpainting benchmark on exact scores: energy distance to the exact posterior against NFE.

Every method of `sde.sampling.inpaint` runs on the closed-form score of a Gaussian mixture
(`sde.oracle.GaussianMixture`) and inpaints one observation n times; the exact posterior
p(x | x_known = y) is the oracle's `condition(mask, y)`, a mixture sampled exactly. A cell is the
(unbiased) squared energy distance ED between the n inpaintings and n fresh exact posterior draws,
divided by the "floor": the mean |ED| between two exact sets of n (what a perfect sampler scores,
noise alone), averaged over the observations. So 1 is perfect and e.g. 50 is 50x the noise.

    python benchmarks/bench_conditional.py [--n 1000] [--steps 100 300] [--quick]
        [--json runs/bench/conditional.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sde import VESDE, VPSDE
from sde.metrics.two_sample import energy_distance
from sde.oracle import GaussianMixture
from sde.sampling import inpaint

# label -> (method, options, nfe for N steps)
METHODS = {
    "replacement (rd + langevin)": ("replacement", {}, lambda n: 2 * n),
    "replacement (rd)": ("replacement", {"corrector": "none"}, lambda n: n),
    "repaint r=4 (rd)": ("repaint", {"corrector": "none", "resample": 4},
                         lambda n: 4 * (n - 1) + 1),
    "dps zeta=0.3 (rd)": ("dps", {"corrector": "none", "zeta": 0.3}, lambda n: n),
    "smc K=4 (rd)": ("smc", {"corrector": "none", "particles": 4}, lambda n: n),
    "smc K=16 (rd)": ("smc", {"corrector": "none", "particles": 16}, lambda n: n),
    "smc K=64 (rd)": ("smc", {"corrector": "none", "particles": 64}, lambda n: n),
}
QUICK = ("replacement (rd + langevin)", "replacement (rd)", "dps zeta=0.3 (rd)", "smc K=16 (rd)")


def problems(quick: bool) -> dict:
    """name -> (mixture, observed mask (D,)): a 2-D ring seen in one coordinate, a 4-D mixture
    seen in two, an 8-D mixture seen in four."""
    out = {"ring 2-D, 1 seen": (GaussianMixture.ring(8, radius=2.0, std=0.2),
                                torch.tensor([0.0, 1.0])),
           "mixture 4-D, 2 seen": (GaussianMixture.random(6, (4,), spread=1.5, std=(0.1, 0.4),
                                                          seed=3), torch.tensor([1.0, 0, 1, 0]))}
    if not quick:
        out["mixture 8-D, 4 seen"] = (
            GaussianMixture.random(8, (8,), spread=1.5, std=(0.1, 0.4), seed=5),
            torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0]))
    return out


def floor_of(post, n, g, pairs) -> float:
    """Mean |ED| of pairs of exact posterior sets of n."""
    return sum(abs(energy_distance(post.sample(n, g), post.sample(n, g)))
               for _ in range(pairs)) / pairs


def score_method(mix, mask, observations, sde, label, n, floors, seed) -> tuple[float, int, float]:
    """Mean ED / floor over the observations, the NFE and the wall time of one method."""
    method, options, _ = METHODS[label]
    ratios, nfe, start = [], 0, time.perf_counter()
    for j, y in enumerate(observations):
        post = mix.condition(mask, y)
        g = torch.Generator().manual_seed(seed + j)
        x, nfe = inpaint(sde, mix.score_fn(sde), y.expand(n, -1).clone(),
                         mask.expand(n, -1).clone(), method=method, generator=g, **options)
        ratios.append(energy_distance(x, post.sample(n, g)) / floors[j])
    return sum(ratios) / len(ratios), nfe, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="inpaintings per observation")
    p.add_argument("--observations", type=int, default=3, help="observations per problem")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 300], help="N values")
    p.add_argument("--sde", choices=["vp", "ve"], default="vp")
    p.add_argument("--floor-pairs", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="2 problems, 4 methods, N = 100")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    steps = [100] if args.quick else args.steps
    labels = QUICK if args.quick else tuple(METHODS)
    rows = []
    print(f"ED / floor to the exact posterior (1 = exact; n = {args.n}, {args.sde.upper()} SDE, "
          f"mean over {args.observations} observations)")
    for name, (mix, mask) in problems(args.quick).items():
        g = torch.Generator().manual_seed(0)
        observations = mix.sample(args.observations, g, dtype=torch.float32)
        floors = [floor_of(mix.condition(mask, y), args.n, g, args.floor_pairs)
                  for y in observations]
        print(f"\n{name}  (floor = {sum(floors) / len(floors):.2e})")
        print(f"  {'method':30s}" + "".join(f"{'N=' + str(s):>16s}" for s in steps))
        for label in labels:
            cells = []
            for s in steps:
                sde = VPSDE(N=s) if args.sde == "vp" else VESDE(N=s)
                ratio, nfe, wall = score_method(mix, mask, observations, sde, label, args.n,
                                                floors, seed=1)
                cells.append(f"{ratio:8.1f} ({nfe:>5d})")
                rows.append({"problem": name, "method": label, "N": s, "nfe": nfe,
                             "ed_over_floor": ratio, "seconds": wall})
            print(f"  {label:30s}" + "".join(f"{c:>16s}" for c in cells), flush=True)
    print("\ncells: ED / floor (NFE); smc's NFE are calls on a batch of K x n particles")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()

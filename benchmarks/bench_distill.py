"""Distillation benchmark on an exact teacher: few-step students against the teacher's samplers.

The teacher is the closed-form score of the 2-D ring (`GaussianMixture.ring(8, 2.0, 0.2)`) under
VPSDE(); every method first warm-starts an MLP by regression on the exact denoiser (see
`sde.distill.base`), then distils. Rows: progressive students (one per round, 2K -> K steps),
one consistency model and one ADD student (trained for 4 steps) sampled at 1, 2, 4, 8 (and 12)
steps, next to the exact teacher's DDIM and DPM-Solver++(2M) at the same NFE. Cells: squared
energy distance to fresh exact samples (x 1e3), averaged over `--chunks` chunks of `--n` samples;
"floor" is what exact samples score against exact samples. Also the CPU time of each
distillation. Goal of issue 14: a 4-NFE student at least as close as the teacher's best sampler
at 12 NFE.

    python benchmarks/bench_distill.py [--quick] [--json runs/bench/distill.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sde.distill import DistillSettings, distill, load_teacher, make_distiller, sample_student
from sde.metrics.two_sample import energy_distance
from sde.sampling.registry import get_sampler

NFES = (1, 2, 4, 8, 12)
SPEC = "oracle:ring:k=8,radius=2.0,std=0.2"


def score(x_fn, teacher, n: int, chunks: int) -> float:
    """Mean energy distance (x 1e3) of `chunks` sets of n samples x_fn(n, generator) to exact ones."""
    total = 0.0
    for c in range(chunks):
        x = x_fn(n, torch.Generator().manual_seed(100 + c))
        y = teacher.mixture.sample(n, torch.Generator().manual_seed(900 + c))
        total += energy_distance(x, y)
    return 1e3 * total / chunks


def student_fn(student, sde, steps: int, noise: str):
    return lambda n, g: sample_student(student, sde, (n, 2), steps=steps, noise=noise,
                                       generator=g)[0]


def run_method(name, teacher, args, options, snapshots=None):
    """Distil; return the EMA student(s) and the CPU seconds. `snapshots`: steps at which to keep
    a copy of the EMA student (progressive: the end of each round)."""
    model = {"_target_": "sde.models.mlp.MLP", "dim": 2, "hidden": args.hidden,
             "num_layers": args.layers}
    method, config = make_distiller(name, teacher, model=model, init_steps=args.init_steps,
                                    lr=args.lr, **options)
    settings = DistillSettings(batch_size=args.batch, log_every=0, checkpoint_every=0)
    kept, tic = {}, time.process_time()
    with tempfile.TemporaryDirectory() as run_dir:
        for end in snapshots or [method.total_steps]:
            distill(method, teacher.data, run_dir=run_dir, config=config, settings=settings,
                    steps=end)
            kept[end] = __import__("copy").deepcopy(method.ema.model_ema)
    seconds = time.process_time() - tic
    print(f"  {name}: {method.total_steps} steps, {seconds:.0f} CPU s", flush=True)
    return method, kept, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test of the table)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init-steps", type=int, default=1200)
    p.add_argument("--round-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=1200, help="consistency / ADD steps")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.n, args.chunks, args.init_steps, args.round_steps, args.steps = 500, 1, 50, 20, 50
        args.hidden, args.layers = 32, 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = load_teacher(SPEC)
    sde, rows, times = teacher.sde, {}, {}
    teacher_fn = lambda name, k: lambda n, g: get_sampler(name)(
        sde, teacher.score_fn_exact, (n, 2), steps=k, generator=g)[0]
    teacher.score_fn_exact = teacher.mixture.score_fn(sde)
    floor = score(lambda n, g: teacher.mixture.sample(n, g), teacher, args.n, args.chunks)
    rows["floor (exact vs exact)"] = dict.fromkeys(NFES, floor)
    rows["teacher DDIM"] = {k: score(teacher_fn("ddim", k), teacher, args.n, args.chunks)
                            for k in NFES}
    rows["teacher DPM-Solver++(2M)"] = {
        k: score(teacher_fn("dpm_solver_pp", k), teacher, args.n, args.chunks) for k in NFES}

    # progressive: 64 -> 32 -> ... -> 1; the student of the round ending at K steps, at K NFE
    prog = {"teacher_steps": 64, "student_steps": 1, "steps_per_round": args.round_steps}
    ends = [args.init_steps + r * args.round_steps for r in range(1, 7)]
    method, kept, times["progressive"] = run_method("progressive", teacher, args, prog, ends)
    rows["progressive (its round's student)"] = {
        64 // 2**r: score(student_fn(kept[e], sde, 64 // 2**r, "ddim"), teacher, args.n,
                          args.chunks) for r, e in enumerate(ends, 1) if 64 // 2**r in NFES}
    for name, opts, label in (
            ("consistency", {"steps": args.steps, "num_scales": 18}, "consistency"),
            ("add", {"steps": args.steps, "student_steps": 4}, "ADD (trained for 4 steps)")):
        method, kept, times[name] = run_method(name, teacher, args, opts)
        student = kept[method.total_steps]
        rows[label] = {k: score(student_fn(student, sde, k, "fresh"), teacher, args.n,
                                args.chunks) for k in NFES}
    print_table(rows, times, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "cpu_s": times, "args": vars(args)},
                                        indent=1, default=str))


def print_table(rows, times, args):
    print(f"2-D ring, oracle teacher; energy distance x 1e3 to exact samples "
          f"(n={args.n}, {args.chunks} chunks)\n")
    print("| sampler | " + " | ".join(f"NFE {k}" for k in NFES) + " |")
    print("|---|" + "---|" * len(NFES))
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(f"{cells[k]:.2f}" if k in cells else "-"
                                          for k in NFES) + " |")
    best12 = min(rows["teacher DDIM"][12], rows["teacher DPM-Solver++(2M)"][12])
    print("\nCPU seconds of each distillation (warm start included, 1 thread): " +
          ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    for label in ("progressive (its round's student)", "consistency",
                  "ADD (trained for 4 steps)"):
        four = rows[label][4]
        print(f"goal: {label} at 4 NFE {four:.2f} vs teacher's best at 12 NFE {best12:.2f}: "
              f"{'met' if four <= best12 else 'NOT met'}")


if __name__ == "__main__":
    main()

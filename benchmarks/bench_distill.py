"""Distillation benchmark: few-step students against their teacher's samplers, on a 2-D mixture
with the exact teacher and on the 8x8 digits with a trained teacher.

Toy: the teacher is the closed-form score of the 2-D ring (`GaussianMixture.ring(8, 2.0, 0.2)`)
under VPSDE(); every method first warm-starts an MLP by regression on the exact denoiser (see
`sde.distill.base`), then distils. Cells: squared energy distance to fresh exact samples
(x 1e3), averaged over `--chunks` chunks of `--n` samples.

Digits: the teacher is a trained `vp_digits` run (`--digits-teacher RUN`; without it one is
trained once into runs/bench/distill_vp_digits by `python -m sde.train experiment=vp_digits`,
or into runs/bench/distill_vp_digits_v with `score.prediction=v` under `--digits-prediction v`);
the students start from its weights (an eps teacher's progressive student uses the "landing"
weighting, see `sde.distill.progressive`). Cells: the digits classifier's feature distance
(`sde.metrics.digits.feature_distance`, a Frechet distance) of `--digits-n` samples to the 1500
real training digits the teacher learned.

Rows (both tables): progressive students (one per round, 2K -> K steps, each at its own K), one
consistency model and one ADD student (trained for 4 steps) sampled at 1, 2, 4, 8 (and 12)
steps, next to the teacher's DDIM and DPM-Solver++(2M) at the same NFE; "floor" is what exact
samples (toy) or the 297 held-out real digits score. Also the CPU time of each distillation
(`time.process_time`, 1 thread). Goal of issue 14: a 4-NFE student at least as close as the
teacher's best sampler at 12 NFE.

    python benchmarks/bench_distill.py [--quick] [--only toy|digits] [--digits-teacher RUN]
                                       [--digits-prediction eps|v]
                                       [--json runs/bench/distill.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sde.distill import DistillSettings, distill, load_teacher, make_distiller, sample_student
from sde.metrics.two_sample import energy_distance
from sde.sampling.registry import get_sampler

NFES = (1, 2, 4, 8, 12)
SPEC = "oracle:ring:k=8,radius=2.0,std=0.2"
DIGITS_TEACHERS = {"eps": Path("runs/bench/distill_vp_digits"),
                   "v": Path("runs/bench/distill_vp_digits_v")}
TEACHER_SAMPLERS = {"teacher DDIM": "ddim", "teacher DPM-Solver++(2M)": "dpm_solver_pp"}
PROGRESSIVE, CONSISTENCY, ADD = ("progressive (its round's student)", "consistency",
                                 "ADD (trained for 4 steps)")


def run_method(name, teacher, options, *, batch, lr, model=None, init_steps=0, snapshots=None):
    """Distil; return the method, copies of its EMA student at `snapshots` (default: the end;
    progressive: the end of each round) and the CPU seconds."""
    method, config = make_distiller(name, teacher, model=model, init_steps=init_steps, lr=lr,
                                    **options)
    settings = DistillSettings(batch_size=batch, log_every=0, checkpoint_every=0)
    kept, tic = {}, time.process_time()
    with tempfile.TemporaryDirectory() as run_dir:
        for end in snapshots or [method.total_steps]:
            distill(method, teacher.data, run_dir=run_dir, config=config, settings=settings,
                    steps=end)
            kept[end] = copy.deepcopy(method.ema.model_ema)
    seconds = time.process_time() - tic
    print(f"  {name}: {method.total_steps} steps, {seconds:.0f} CPU s", flush=True)
    return method, kept, seconds


def student_rows(teacher, measure, shape, *, batch, lr, prog, steps, model=None, init_steps=0):
    """The three students' rows {label: {nfe: value}} and CPU seconds; `measure(draw)` scores a
    sampler draw(n, generator) -> samples; `prog`: the progressive options (teacher_steps,
    steps_per_round; distilled down to 1 step)."""
    rows, times, common = {}, {}, {"batch": batch, "lr": lr, "model": model,
                                   "init_steps": init_steps}
    draw = lambda student, k, noise: lambda n, g: sample_student(
        student, teacher.sde, (n, *shape), steps=k, noise=noise, generator=g)[0]
    top, per_round = prog["teacher_steps"], prog["steps_per_round"]
    rounds = top.bit_length() - 1  # top -> 1
    ends = [init_steps + r * per_round for r in range(1, rounds + 1)]
    _, kept, times["progressive"] = run_method(
        "progressive", teacher, {**prog, "student_steps": 1}, snapshots=ends, **common)
    rows[PROGRESSIVE] = {top // 2**r: measure(draw(kept[e], top // 2**r, "ddim"))
                         for r, e in enumerate(ends, 1) if top // 2**r in NFES}
    for name, opts, label in (("consistency", {"steps": steps, "num_scales": 18}, CONSISTENCY),
                              ("add", {"steps": steps, "student_steps": 4}, ADD)):
        method, kept, times[name] = run_method(name, teacher, opts, **common)
        student = kept[method.total_steps]
        rows[label] = {k: measure(draw(student, k, "fresh")) for k in NFES}
    return rows, times


def teacher_rows(sde, score_fn, measure, shape) -> dict:
    """The teacher's DDIM and DPM-Solver++(2M) rows at every NFE."""
    def draw(name, k):
        return lambda n, g: get_sampler(name)(sde, score_fn, (n, *shape), steps=k,
                                              generator=g)[0]
    return {label: {k: measure(draw(name, k)) for k in NFES}
            for label, name in TEACHER_SAMPLERS.items()}


# --- toy: the exact teacher of the 8-mode ring -------------------------------------------------
def toy_table(args):
    teacher = load_teacher(SPEC)

    def measure(draw) -> float:
        """Mean energy distance (x 1e3) of `chunks` sets of n samples to exact ones."""
        total = 0.0
        for c in range(args.chunks):
            x = draw(args.n, torch.Generator().manual_seed(100 + c))
            y = teacher.mixture.sample(args.n, torch.Generator().manual_seed(900 + c))
            total += energy_distance(x, y)
        return 1e3 * total / args.chunks

    rows = {"floor (exact vs exact)": dict.fromkeys(NFES, measure(teacher.mixture.sample))}
    rows.update(teacher_rows(teacher.sde, teacher.mixture.score_fn(teacher.sde), measure, (2,)))
    model = {"_target_": "sde.models.mlp.MLP", "dim": 2, "hidden": args.hidden,
             "num_layers": args.layers}
    students, times = student_rows(
        teacher, measure, (2,), batch=args.batch, lr=args.lr, model=model,
        init_steps=args.init_steps, steps=args.steps,
        prog={"teacher_steps": 64, "steps_per_round": args.round_steps})
    title = (f"2-D ring, oracle teacher; energy distance x 1e3 to exact samples (n={args.n}, "
             f"{args.chunks} chunks)")
    return title, {**rows, **students}, times


# --- digits: a trained vp_digits teacher ------------------------------------------------------
def digits_teacher(path, prediction: str = "eps") -> Path:
    """`path`, or the default teacher run predicting `prediction`, trained once (python -m
    sde.train) if it has no checkpoint yet."""
    if path is not None:
        return Path(path)
    run_dir = DIGITS_TEACHERS[prediction]
    if not (run_dir / "checkpoints").is_dir():
        print(f"training the digits teacher into {run_dir} (experiment=vp_digits "
              f"score.prediction={prediction})", flush=True)
        subprocess.run([sys.executable, "-m", "sde.train", "experiment=vp_digits",
                        f"score.prediction={prediction}", "logger=none",
                        "trainer.progress=false", f"hydra.run.dir={run_dir}"], check=True)
    return run_dir


def digits_table(args):
    from sde.metrics import digits
    from sde.run import load_run

    path = digits_teacher(args.digits_teacher, args.digits_prediction)
    run = load_run(path, device="cpu")
    teacher = load_teacher(str(path), device="cpu")
    real, _ = digits.real_digits(train=True)  # (1500, 1, 8, 8) in [-1, 1]
    held_out, _ = digits.real_digits(train=False)  # (297, 1, 8, 8)

    def measure(draw) -> float:
        """Feature distance of n samples (clipped to [-1, 1] as sde.sample does) to the real
        training digits."""
        x = draw(args.digits_n, torch.Generator().manual_seed(100))
        return digits.feature_distance(x.clamp(-1.0, 1.0), real)

    shape = tuple(run.shape)
    rows = {"floor (297 held-out real digits)": dict.fromkeys(
        NFES, digits.feature_distance(held_out, real))}
    rows.update(teacher_rows(run.sde, run.score_fn, measure, shape))
    students, times = student_rows(
        teacher, measure, shape, batch=args.digits_batch, lr=args.digits_lr,
        steps=args.digits_steps,
        prog={"teacher_steps": args.digits_teacher_steps,
              "steps_per_round": args.digits_round_steps})
    title = (f"8x8 digits, teacher {path} (step {run.step}, predicts "
             f"{run.config['score']['prediction']}); digits classifier feature distance "
             f"to the 1500 training digits (n={args.digits_n})")
    return title, {**rows, **students}, times


def print_table(title, rows, times) -> dict:
    """Print the table, the CPU times and the goal lines; the goal figures."""
    print(f"\n{title}\n")
    print("| sampler | " + " | ".join(f"NFE {k}" for k in NFES) + " |")
    print("|---|" + "---|" * len(NFES))
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(f"{cells[k]:.2f}" if k in cells else "-"
                                          for k in NFES) + " |")
    best12 = min(rows[label][12] for label in TEACHER_SAMPLERS)
    print("\nCPU seconds of each distillation (warm start included, 1 thread): " +
          ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    goals = {}
    for label in (PROGRESSIVE, CONSISTENCY, ADD):
        four = goals[label] = rows[label][4]
        print(f"goal: {label} at 4 NFE {four:.2f} vs teacher's best at 12 NFE {best12:.2f}: "
              f"{'met' if four <= best12 else 'NOT met'}")
    return {"best_teacher_12": best12, "students_4": goals}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test of the tables)")
    p.add_argument("--only", choices=("toy", "digits"), default=None)
    p.add_argument("--json", type=Path, default=None)
    toy = p.add_argument_group("toy")
    toy.add_argument("--n", type=int, default=2000)
    toy.add_argument("--chunks", type=int, default=3)
    toy.add_argument("--hidden", type=int, default=128)
    toy.add_argument("--layers", type=int, default=3)
    toy.add_argument("--batch", type=int, default=256)
    toy.add_argument("--lr", type=float, default=1e-3)
    toy.add_argument("--init-steps", type=int, default=1200)
    toy.add_argument("--round-steps", type=int, default=300)
    toy.add_argument("--steps", type=int, default=1200, help="consistency / ADD steps")
    dig = p.add_argument_group("digits")
    dig.add_argument("--digits-teacher", default=None, help="a trained vp_digits run directory")
    dig.add_argument("--digits-prediction", choices=tuple(DIGITS_TEACHERS), default="eps",
                     help="what the teacher trained without --digits-teacher predicts")
    dig.add_argument("--digits-n", type=int, default=1000)
    dig.add_argument("--digits-batch", type=int, default=64)
    dig.add_argument("--digits-lr", type=float, default=2e-4)
    dig.add_argument("--digits-teacher-steps", type=int, default=128)
    dig.add_argument("--digits-round-steps", type=int, default=300)
    dig.add_argument("--digits-steps", type=int, default=1000, help="consistency / ADD steps")
    args = p.parse_args()
    if args.quick:
        args.n, args.chunks, args.init_steps, args.round_steps, args.steps = 500, 1, 50, 20, 50
        args.hidden, args.layers = 32, 2
        args.digits_n, args.digits_batch, args.digits_teacher_steps = 200, 8, 8
        args.digits_round_steps, args.digits_steps = 3, 5
    return args


def main():
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {}
    for name, table in (("toy", toy_table), ("digits", digits_table)):
        if args.only in (None, name):
            title, rows, times = table(args)
            goal = print_table(title, rows, times)
            results[name] = {"title": title, "rows": rows, "cpu_s": times, "goal": goal}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "args": vars(args)}, indent=1, default=str))


if __name__ == "__main__":
    main()

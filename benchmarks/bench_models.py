"""Benchmark the score networks: parameters, forward and forward+backward time, peak memory.

    python benchmarks/bench_models.py                       # CPU (+ CUDA when present), short
    python benchmarks/bench_models.py --devices cuda --batch-sizes 32,128 --models ddpmpp,ncsnpp
    python benchmarks/bench_models.py --models ddpmpp_deep,ncsnpp_deep --repeats 5 --json out.json

Networks are the released CIFAR-10 configs of `conf/model/*.yaml` (32x32x3) and the toy MLP.
On CPU each model runs in its own process, so that the peak resident memory (RSS) it reports
belongs to that model (it includes the ~0.3 GiB of the torch runtime). On CUDA each model runs
eager and compiled (`torch.compile`), in float32 and in bf16 autocast, and peak memory is
`torch.cuda.max_memory_allocated` above what was allocated before the step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from sde.runs.paths import CONFIG_DIR, group_config

CONF = CONFIG_DIR / "model"
IMAGE_MODELS = ["ddpmpp", "ncsnpp", "ddpm", "ddpmpp_deep", "ncsnpp_deep"]
MLP_BATCH_FACTOR = 1024  # the MLP runs at batch_size * 1024 rows of 2-D data


def build(name: str) -> torch.nn.Module:
    return instantiate(group_config("model", name))


def inputs(name: str, batch: int, device: str, channels_last: bool = False):
    """(x, cond) for one step; cond > 0 (NCSN++ embeds log sigma)."""
    if name == "mlp":
        x = torch.randn(batch * MLP_BATCH_FACTOR, 2, device=device)
    else:
        x = torch.randn(batch, 3, 32, 32, device=device)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
    return x, torch.rand(x.shape[0], device=device) * 10 + 0.01


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: str, repeats: int, warmup: bool = True) -> float:
    """Median wall time of `fn()` in milliseconds over `repeats` runs (after one warm-up)."""
    if warmup:
        fn()
        _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def step_fns(model, x, cond, bf16: bool, device: str):
    """The forward-only and the forward+backward closures."""
    ctx = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    def forward():
        with torch.no_grad(), ctx():
            model(x, cond)

    def forward_backward():
        with ctx():
            out = model(x, cond)
        out.float().square().mean().backward()

    return forward, forward_backward


def peak_mib(device: str, fn) -> float:
    """Peak memory in MiB: on CUDA, allocations of `fn()` above the baseline; on CPU, the
    process's peak RSS so far (`fn` is not run again)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def measure(name: str, device: str, batch_sizes, repeats: int, compiled: bool, bf16: bool,
            channels_last: bool) -> list[dict]:
    """Rows for one model under one setting, batch sizes in increasing order."""
    model = build(name).to(device).train()
    if channels_last and name != "mlp":
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    runner = torch.compile(model) if compiled else model
    rows = []
    for batch in sorted(batch_sizes):
        x, cond = inputs(name, batch, device, channels_last)
        forward, forward_backward = step_fns(runner, x, cond, bf16, device)
        start = time.perf_counter()
        forward_backward()  # first call: compilation when compiled
        first_s = time.perf_counter() - start
        row = dict(model=name, device=device, compiled=compiled,
                   dtype="bf16" if bf16 else "fp32", batch=x.shape[0], params=params,
                   fwd_ms=median_time(forward, device, repeats),
                   fwd_bwd_ms=median_time(forward_backward, device, repeats, warmup=False),
                   peak_mib=peak_mib(device, forward_backward), first_call_s=first_s)
        model.zero_grad(set_to_none=True)
        rows.append(row)
    return rows


def run_cpu_isolated(name: str, args) -> list[dict]:
    """One model in a fresh process (its own RSS peak)."""
    cmd = [sys.executable, __file__, "--worker", name, "--batch-sizes",
           ",".join(map(str, args.batch_sizes)), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def settings(device: str, args):
    if device == "cpu":
        return [(False, False)] + ([(False, True)] if args.cpu_bf16 else [])
    return [(c, b) for c in (False, True) for b in (False, True)]


def table(rows: list[dict]) -> str:
    head = ("| model | device | mode | dtype | batch | params | forward ms | fwd+bwd ms "
            "| peak MiB |\n|---|---|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        mode = "compiled" if r["compiled"] else "eager"
        lines.append(f"| {r['model']} | {r['device']} | {mode} | {r['dtype']} | {r['batch']} | "
                     f"{r['params'] / 1e6:.2f}M | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
                     f"{r['peak_mib']:.0f} |")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,ddpm,ddpmpp,ncsnpp",
                   help=f"comma-separated, from mlp,{','.join(IMAGE_MODELS)}")
    p.add_argument("--devices", default=None, help="cpu,cuda (default: cpu, and cuda if present)")
    p.add_argument("--batch-sizes", default=None,
                   help="image batch sizes (default 1 on CPU, 32,128 on CUDA); "
                        f"the MLP uses {MLP_BATCH_FACTOR}x")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--cpu-bf16", action="store_true", help="also bf16 autocast on CPU")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    sizes = lambda default: [int(b) for b in (args.batch_sizes or default).split(",")]  # noqa: E731
    if args.worker:  # child process: one model on CPU, rows as JSON on the last line
        args.batch_sizes = sizes("1")
        print(json.dumps(measure(args.worker, "cpu", args.batch_sizes, args.repeats, False, False,
                                 args.channels_last)))
        return
    devices = (args.devices or ("cpu,cuda" if torch.cuda.is_available() else "cpu")).split(",")
    rows = []
    for device in devices:
        args.batch_sizes = sizes("1" if device == "cpu" else "32,128")
        for name in args.models.split(","):
            for compiled, bf16 in settings(device, args):
                if device == "cpu" and not bf16:
                    rows += run_cpu_isolated(name, args)
                else:
                    rows += measure(name, device, args.batch_sizes, args.repeats, compiled, bf16,
                                    args.channels_last)
                print(table(rows[-len(args.batch_sizes):]).splitlines()[-1], flush=True)
    print()
    print(f"torch {torch.__version__}, {args.threads} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

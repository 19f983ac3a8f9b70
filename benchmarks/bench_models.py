"""Benchmark the score networks: parameters, forward and forward+backward time, peak memory.

    python benchmarks/bench_models.py                       # CPU (+ CUDA when present), short
    python benchmarks/bench_models.py --devices cuda --batch-sizes 32,128 --models ddpmpp,ncsnpp
    python benchmarks/bench_models.py --models ddpmpp_deep,ncsnpp_deep --repeats 5 --json out.json

Networks are the released CIFAR-10 configs of `conf/model/*.yaml` (32x32x3) and the toy MLP.
On CPU each model runs in its own process, so that the peak resident memory (RSS) it reports
belongs to that model (it includes the ~0.3 GiB of the torch runtime). On CUDA each model runs
eager and compiled (`torch.compile`), in float32 and in bf16 autocast, and peak memory is
`torch.cuda.max_memory_allocated` above what was allocated before the step.

On CPU, bf16-autocast rows come too (`--no-cpu-bf16` drops them), with a table of the fp32 / bf16
time ratio, headed by what `sde.training.precision` detects (the CPU's bf16 kind and what
`trainer.precision=auto` picks) and a 1024^2 matrix product's GFLOP/s in both dtypes.
`--isa-sweep` repeats the CPU runs with oneDNN capped (`ONEDNN_MAX_CPU_ISA`) at the instruction
sets of older CPUs, which on an AMX machine shows what bf16 does on each generation:

    python benchmarks/bench_models.py --quick --isa-sweep --threads 1 --clock process  # ~1 min
    python benchmarks/bench_models.py --batch-sizes 1,8    # the released networks, this CPU

The cap restricts oneDNN (convolutions, bf16 matrix products) but not MKL's fp32 matrix
products, nor torch's check of the CPU flags; on a real AVX2-only CPU torch sends bf16 matrix
products to a fallback kernel instead, which is as slow (under 1 GFLOP/s, issue 10).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sde.runs.paths import CONFIG_DIR, group_config

ROOT = Path(__file__).resolve().parents[1]
CONF = CONFIG_DIR / "model"
IMAGE_MODELS = ["ddpmpp", "ncsnpp", "ddpm", "ddpmpp_deep", "ncsnpp_deep"]
MLP_BATCH_FACTOR = 1024  # the MLP runs at batch_size * 1024 rows of 2-D data
# Small variants for --quick: (config, overrides).
TINY = {"ddpmpp_tiny": ("ddpmpp", {"nf": 32, "ch_mult": [1, 2], "num_res_blocks": 1}),
        "mlp_tiny": ("mlp", {"hidden": 64, "num_layers": 2})}
# oneDNN instruction-set caps for --isa-sweep (None: uncapped), with the CPUs they stand for.
ISAS = {"AVX2": "AVX2 only: Intel Haswell-Comet Lake, AMD Zen 1-3",
        "AVX512_CORE": "AVX-512, no BF16: Skylake-SP, Cascade Lake, Ice Lake",
        "AVX512_CORE_BF16": "AVX512_BF16: Cooper Lake, AMD Zen 4/5",
        None: "uncapped (this CPU)"}


def build(name: str) -> torch.nn.Module:
    base, overrides = TINY.get(name, (name, {}))
    return instantiate(OmegaConf.merge(group_config("model", base), overrides))


def inputs(name: str, batch: int, device: str, channels_last: bool = False):
    """(x, cond) for one step; cond > 0 (NCSN++ embeds log sigma)."""
    if name.startswith("mlp"):
        x = torch.randn(batch * MLP_BATCH_FACTOR, 2, device=device)
    else:
        x = torch.randn(batch, 3, 32, 32, device=device)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
    return x, torch.rand(x.shape[0], device=device) * 10 + 0.01


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]


def median_time(fn, device: str, repeats: int, warmup: bool = True) -> float:
    """Median time of `fn()` in milliseconds over `repeats` runs (after one warm-up), by `clock`:
    wall time, or the process's CPU time (`--clock process`, steadier on a shared machine)."""
    if warmup:
        fn()
        _sync(device)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        _sync(device)
        times.append((clock() - start) * 1e3)
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
    if channels_last and not name.startswith("mlp"):
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


def gemm_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    """GFLOP/s of an n x n matrix product in `dtype` (the bf16 trap in one number)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / (median_time(lambda: a @ b, "cpu", repeats) / 1e3) / 1e9


def run_cpu_isolated(name: str, args, bf16: bool = False, isa: str | None = None) -> list[dict]:
    """One model (or `gemm`) in a fresh process (its own RSS peak, its own oneDNN cap)."""
    cmd = [sys.executable, __file__, "--worker", name, "--batch-sizes",
           ",".join(map(str, args.batch_sizes)), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--clock", args.clock]
    cmd += ["--worker-bf16"] if bf16 else []
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"worker {name} (isa {isa}) failed:\n{done.stderr[-2000:]}")
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return [dict(r, isa=isa or "native") for r in rows]


def worker(args) -> list[dict]:
    """The child process's rows: one model on CPU, or the GEMM throughput."""
    if args.worker == "gemm":
        return [{"model": "gemm", "fp32_gflops": gemm_gflops(torch.float32),
                 "bf16_gflops": gemm_gflops(torch.bfloat16)}]
    return measure(args.worker, "cpu", args.batch_sizes, args.repeats, False, args.worker_bf16,
                   args.channels_last)


def sweep_isas(args) -> list:
    """The oneDNN caps of the CPU rows (None: uncapped)."""
    if args.isas:
        return [None if isa == "native" else isa for isa in args.isas.split(",")]
    return list(ISAS) if args.isa_sweep else [None]


def detection() -> str:
    """What `sde.training.precision` sees on this machine."""
    sys.path.insert(0, str(ROOT))
    from sde.training.precision import describe_cpu, resolve_precision

    return f"{describe_cpu()}; trainer.precision=auto -> {resolve_precision('auto', 'cpu')}"


def ratio_table(rows: list[dict], gemms: dict) -> str:
    """fp32 vs bf16 forward+backward per (oneDNN cap, model, batch), with the GEMM GFLOP/s."""
    lines = ["| oneDNN cap | stands for | GEMM GFLOP/s fp32 / bf16 | model | batch | fp32 fwd+bwd ms "
             "| bf16 fwd+bwd ms | bf16 speed-up |", "|---|---|---|---|---:|---:|---:|---:|"]
    fp32 = {(r["isa"], r["model"], r["batch"]): r for r in rows if r["dtype"] == "fp32"}
    for r in rows:
        base = fp32.get((r["isa"], r["model"], r["batch"]))
        if r["dtype"] != "bf16" or base is None:
            continue
        g = gemms.get(r["isa"], {})
        gemm = f"{g['fp32_gflops']:.0f} / {g['bf16_gflops']:.1f}" if g else "-"
        cap = None if r["isa"] == "native" else r["isa"]
        lines.append(f"| {r['isa']} | {ISAS.get(cap, '')} | {gemm} | {r['model']} | {r['batch']} "
                     f"| {base['fwd_bwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} "
                     f"| {base['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x |")
    return "\n".join(lines)


def settings(device: str, args):
    """(compiled, bf16) pairs: CPU eager fp32 (+ bf16); CUDA eager/compiled x fp32/bf16."""
    if device == "cpu":
        return [(False, False)] + ([(False, True)] if args.cpu_bf16 or args.isa_sweep else [])
    return [(c, b) for c in (False, True) for b in (False, True)]


def table(rows: list[dict]) -> str:
    head = ("| model | device | mode | dtype | batch | params | forward ms | fwd+bwd ms "
            "| peak MiB |\n|---|---|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        mode = "compiled" if r["compiled"] else "eager"
        device = r["device"] + (f" ({r['isa']})" if r.get("isa", "native") != "native" else "")
        lines.append(f"| {r['model']} | {device} | {mode} | {r['dtype']} | {r['batch']} | "
                     f"{r['params'] / 1e6:.2f}M | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
                     f"{r['peak_mib']:.0f} |")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None,
                   help=f"comma-separated, from mlp,{','.join(IMAGE_MODELS)},{','.join(TINY)} "
                        "(default mlp,ddpm,ddpmpp,ncsnpp; with --quick mlp_tiny,ddpmpp_tiny)")
    p.add_argument("--quick", action="store_true",
                   help="tiny networks, batch 2, CPU only, bf16 rows on (about a minute)")
    p.add_argument("--isa-sweep", action="store_true",
                   help="also run the CPU rows with oneDNN capped at AVX2, AVX512_CORE and "
                        "AVX512_CORE_BF16 (what bf16 does on older CPUs)")
    p.add_argument("--isas", default=None,
                   help="the caps to sweep, comma-separated (native: uncapped); implies "
                        "--isa-sweep")
    p.add_argument("--devices", default=None, help="cpu,cuda (default: cpu, and cuda if present)")
    p.add_argument("--batch-sizes", default=None,
                   help="image batch sizes (default 1 on CPU, 32,128 on CUDA); "
                        f"the MLP uses {MLP_BATCH_FACTOR}x")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or the process's CPU time (with --threads 1: the compute "
                        "a step costs, whatever else the machine runs)")
    p.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="also bf16 autocast on CPU, and the fp32 / bf16 ratio table (default on)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-bf16", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or ",".join(TINY)
        args.devices = args.devices or "cpu"
        args.batch_sizes = args.batch_sizes or "2"
        args.cpu_bf16 = True
    args.models = args.models or "mlp,ddpm,ddpmpp,ncsnpp"
    args.isa_sweep = args.isa_sweep or bool(args.isas)
    return args


def main(argv=None) -> None:
    global clock
    args = parse(argv)
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    sizes = lambda default: [int(b) for b in (args.batch_sizes or default).split(",")]  # noqa: E731
    if args.worker:  # child process: one model on CPU, rows as JSON on the last line
        args.batch_sizes = sizes("1")
        print(json.dumps(worker(args)))
        return
    devices = (args.devices or ("cpu,cuda" if torch.cuda.is_available() else "cpu")).split(",")
    rows, gemms = [], {}
    if "cpu" in devices:
        print(detection(), flush=True)
    for device in devices:
        args.batch_sizes = sizes("1" if device == "cpu" else "32,128")
        isas = sweep_isas(args) if device == "cpu" else [None]
        for isa in isas:
            if device == "cpu" and (args.cpu_bf16 or args.isa_sweep):
                gemms[isa or "native"] = run_cpu_isolated("gemm", args, isa=isa)[0]
            for name in args.models.split(","):
                for compiled, bf16 in settings(device, args):
                    if device == "cpu":
                        rows += run_cpu_isolated(name, args, bf16, isa)
                    else:
                        rows += measure(name, device, args.batch_sizes, args.repeats, compiled,
                                        bf16, args.channels_last)
                    print(table(rows[-len(args.batch_sizes):]).splitlines()[-1], flush=True)
    print()
    print(f"torch {torch.__version__}, {args.threads} CPU threads, {args.clock} clock"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(table(rows))
    if gemms:
        print()
        print(ratio_table(rows, gemms))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "gemm": gemms}, indent=1))


if __name__ == "__main__":
    main()

"""Data benchmark: peak memory and throughput of `ve_church` (shrunk network) on image folders
of 1,000 and 10,000 JPEGs, to show that streaming keeps peak memory flat in the folder size.

Each folder size runs in a fresh process: 20 steps of data alone (`Dataset.batch`, the loader's
images/s), then 20 training steps of `python -m sde.train experiment=ve_church` at 64x64 with a
small NCSN++ (training images/s, including start-up). The process's peak RSS is
`getrusage(RUSAGE_SELF).ru_maxrss`; the DataLoader workers' largest is reported apart.
`--memory` adds the in-memory path (`data.stream=false`) for comparison.

    python benchmarks/bench_data.py [--sizes 1000 10000] [--workers 2] [--memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "sde-bench-data"
STEPS = 20
SHRUNK = ["model.image_size=64", "model.nf=8", "model.ch_mult=[1,2]", "model.num_groups=4",
          "model.num_res_blocks=1", "model.attn_resolutions=[]"]


def make_folder(n: int, size: int = 64) -> Path:
    """n smooth random size x size JPEGs under the temp folder (made once, then reused)."""
    from PIL import Image

    folder = CACHE / f"jpeg_{n}_{size}"
    if folder.is_dir() and len(list(folder.rglob("*.jpg"))) == n:
        return folder
    rng = np.random.default_rng(n)
    ramp_x, ramp_y = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size))  # (H, W)
    for k in range(n):
        sub = folder / f"{k // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 255, 3)
        image = np.stack([a * ramp_x, b * ramp_y, np.full((size, size), c)], axis=-1)
        image = image + rng.normal(0, 8, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(sub / f"{k:06d}.jpg",
                                                                     quality=90)
    return folder


def peak_mib() -> tuple[float, float]:
    """(this process, its largest child) peak resident set size, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, child


def measure(folder: Path, workers: int, batch_size: int, stream: bool) -> dict:
    """One folder in this process: data alone, then training; images/s and peak RSS."""
    from hydra import compose, initialize_config_dir

    from sde.data import Dataset
    from sde.runs.paths import CONFIG_DIR
    from sde.train import run

    overrides = ["experiment=ve_church", f"data.root={folder}", "data.size=64",
                 "data.shape=[3,64,64]", f"data.workers={workers}", f"data.stream={stream}",
                 *SHRUNK, f"trainer.steps={STEPS}", f"trainer.batch_size={batch_size}",
                 "trainer.device=cpu", "trainer.progress=false", "trainer.sample_every=0",
                 "trainer.num_samples=0", "trainer.eval_every=0", "trainer.log_every=10",
                 "trainer.checkpoint_every=1000000", "logger=none"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    data_options = {k: v for k, v in dict(cfg.data).items()}
    tic = time.perf_counter()
    data = Dataset(**{**data_options, "shape": list(cfg.data.shape)})
    for step in range(STEPS):
        data.batch(step, batch_size, seed=0)
    data_rate = STEPS * batch_size / (time.perf_counter() - tic)
    if hasattr(data, "loader"):
        data.loader.close()
    del data
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        run(cfg, run_dir)
    train_rate = STEPS * batch_size / (time.perf_counter() - tic)
    own, child = peak_mib()
    return {"images": len(list(folder.rglob("*.jpg"))), "stream": stream,
            "data_images_per_s": round(data_rate, 1), "train_images_per_s": round(train_rate, 1),
            "peak_rss_mib": round(own, 1), "worker_peak_rss_mib": round(child, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory", action="store_true", help="also the in-memory path")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the training process (1: steady on a busy CPU)")
    parser.add_argument("--one", nargs=2, metavar=("FOLDER", "STREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one measurement, printed as JSON
        import torch

        torch.set_num_threads(args.threads)
        folder, stream = Path(args.one[0]), args.one[1] == "true"
        print("RESULT " + json.dumps(measure(folder, args.workers, args.batch_size, stream)))
        return
    rows = []
    for stream in [True, False] if args.memory else [True]:
        for n in args.sizes:
            folder = make_folder(n)
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(folder), str(stream).lower(),
                 "--workers", str(args.workers), "--batch-size", str(args.batch_size),
                 "--threads", str(args.threads)],
                capture_output=True, text=True, check=False, cwd=ROOT)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"bench_data: the run on {folder} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(line[len("RESULT "):]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nve_church (shrunk NCSN++, 64x64), {STEPS} steps, batch {args.batch_size}, "
          f"{args.workers} workers, {args.threads} torch thread(s)")
    print(f"{'images':>8} {'mode':>7} {'data img/s':>11} {'train img/s':>12} "
          f"{'peak RSS MiB':>13} {'worker peak':>12}")
    for r in rows:
        print(f"{r['images']:>8} {'stream' if r['stream'] else 'memory':>7} "
              f"{r['data_images_per_s']:>11} {r['train_images_per_s']:>12} "
              f"{r['peak_rss_mib']:>13} {r['worker_peak_rss_mib']:>12}")
    streamed = [r["peak_rss_mib"] for r in rows if r["stream"]]
    if len(streamed) > 1:
        spread = (max(streamed) - min(streamed)) / min(streamed)
        print(f"streaming peak RSS spread over the sizes: {100 * spread:.1f}% "
              f"({'flat' if spread <= 0.10 else 'NOT flat'}: the bound is 10%)")


if __name__ == "__main__":
    main()

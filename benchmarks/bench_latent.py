"""Benchmark latent diffusion on CPU: autoencoder reconstruction and the cost of a score step.

    python benchmarks/bench_latent.py                     # ~3 min on 2 busy cores (200 steps)
    python benchmarks/bench_latent.py --ae-steps 1000 --json out.json

1. Reconstruction PSNR (dB, images in [-1, 1]) of a tiny LDM autoencoder trained for
   `--ae-steps` Adam steps (L1 + KL 1e-6, no discriminator), on held-out data it never saw:
   the 297 test digits (8x8, f = 2, z = 2: 32 numbers per 64-pixel digit) and the held-out
   photo patches (32x32 RGB, f = 4, z = 4: 256 numbers per 3072 values). Reference rows: the
   mean training image, and area-downsampling by f then bilinear upsampling (3 (H/f)^2
   numbers, fewer than the latent's). `psnr_autoencoder_train` is the same on the training
   images: far above the held-out PSNR means the autoencoder overfits (the 416 photo patches
   do after a few thousand steps; see docs/latent.md, Benchmark).
2. Training seconds per step (forward, backward, Adam) of the same DDPM score network on
   32x32x3 images in pixel space and on their (4, 8, 8) latents: with cached latents, and with
   the frozen encoder run on every batch (on the fly).
3. Trained runs (optional, `--ae-run`, `--ldm-run`, `--pixel-run`): the held-out PSNR of an
   `experiment=ae_digits` run, and for `n` samples of an `ldm_digits` run (decoded) and of the
   pixel-space `vp_digits` run (same sampler, seeds): the median training throughput logged in
   their metrics.json and, when `sde.metrics.digits` is installed, the digits classifier's mean
   confidence (max softmax) on the samples.

    python benchmarks/bench_latent.py --ae-run runs/ae_digits/T --ldm-run runs/ldm_digits/T \
        --pixel-run runs/vp_digits/T --n 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sde import VPSDE
from sde.data.photos import photo_patches
from sde.data.sources import digits
from sde.latent import AutoencoderLoss, LatentSpace
from sde.latent.steps import ae_parameters, autoencoder_step
from sde.losses import dsm_loss
from sde.models import get_score_fn
from sde.models.autoencoder import AutoencoderKL, psnr
from sde.models.ddpm import DDPM


def _datasets():
    """(name, train, test, autoencoder kwargs): images in [-1, 1]."""
    to_pm1 = lambda x, top: x.float() / top * 2 - 1  # noqa: E731
    return [
        ("digits 8x8 (f=2, z=2)", to_pm1(digits(train=True), 16), to_pm1(digits(train=False), 16),
         dict(in_channels=1, ch=16, ch_mult=(1, 2), z_channels=2, num_groups=8)),
        ("photo patches 32x32 (f=4, z=4)", to_pm1(photo_patches(size=32), 255),
         to_pm1(photo_patches(size=32, train=False), 255),
         dict(in_channels=3, ch=16, ch_mult=(1, 2, 2), z_channels=4, num_groups=8)),
    ]


def train_autoencoder(train, kwargs, steps, batch_size, seed=0):
    """A tiny AutoencoderKL after `steps` Adam steps on `train`; returns (model, seconds)."""
    torch.manual_seed(seed)
    ae = AutoencoderKL(num_res_blocks=1, **kwargs)
    loss_fn = AutoencoderLoss(kl_weight=1e-6)
    opt = torch.optim.Adam(ae_parameters(ae, loss_fn), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        batch = train[torch.randint(len(train), (batch_size,), generator=g)]
        autoencoder_step(ae, loss_fn, batch, step, opt_ae=opt, generator=g)
    return ae.eval(), time.perf_counter() - start


def _reconstruct(ae, images: torch.Tensor) -> torch.Tensor:
    """decoder(posterior mean) of `images`, by batches of 128, clamped to [-1, 1]."""
    return torch.cat([ae.decode(ae.encode(x).mode()) for x in images.split(128)]).clamp(-1, 1)


@torch.no_grad()
def reconstruction_rows(steps, batch_size):
    rows = []
    for name, train, test, kwargs in _datasets():
        with torch.enable_grad():
            ae, seconds = train_autoencoder(train, kwargs, steps, batch_size)
        rec = _reconstruct(ae, test)
        f = ae.downsample_factor
        small = F.avg_pool2d(test, f)
        upsampled = F.interpolate(small, scale_factor=f, mode="bilinear", align_corners=False)
        rows.append(dict(data=name, test_images=len(test), ae_steps=steps,
                         train_seconds=round(seconds, 1),
                         psnr_autoencoder=psnr(test, rec).mean().item(),
                         psnr_autoencoder_train=psnr(train, _reconstruct(ae, train)).mean().item(),
                         psnr_downsample=psnr(test, upsampled).mean().item(),
                         psnr_mean_image=psnr(test, train.mean(0).expand_as(test)).mean().item()))
    return rows


def _score_net(in_channels, image_size):
    return DDPM(image_size=image_size, in_channels=in_channels, nf=32, ch_mult=(1, 2, 2),
                num_res_blocks=1, attn_resolutions=(), dropout=0.0, num_groups=8)


def _seconds_per_step(model, batches, encode=None, repeats=5):
    """Median seconds of one DSM training step (after one warm-up step)."""
    sde = VPSDE()
    score_fn = get_score_fn(sde, model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        x = batches[i % len(batches)]
        if encode is not None:
            x = encode(x)
        loss = dsm_loss(sde, score_fn, x, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def step_rows(batch_size, repeats):
    images = photo_patches(size=32).float() / 255 * 2 - 1
    batches = list(images[: batch_size * 2].split(batch_size))
    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=3, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4,
                       num_groups=8)
    space = LatentSpace(ae, sample_posterior=True)
    space.fit_scale_factor(batches[0])
    cached = [space.encode(x) for x in batches]
    latent_shape = tuple(cached[0].shape[1:])
    pixel = _seconds_per_step(_score_net(3, 32), batches, repeats=repeats)
    latent = _seconds_per_step(_score_net(latent_shape[0], latent_shape[1]), cached,
                               repeats=repeats)
    on_the_fly = _seconds_per_step(_score_net(latent_shape[0], latent_shape[1]), batches,
                                   encode=space.encode, repeats=repeats)
    return [dict(space="pixel (3, 32, 32)", seconds_per_step=pixel, speedup=1.0),
            dict(space=f"latent {latent_shape}, cached", seconds_per_step=latent,
                 speedup=pixel / latent),
            dict(space=f"latent {latent_shape}, encoded on the fly", seconds_per_step=on_the_fly,
                 speedup=pixel / on_the_fly)]


@torch.no_grad()
def ae_run_row(ae_run) -> dict:
    """Held-out PSNR of a trained autoencoder run on the 297 test digits (posterior mean)."""
    from sde.runs.load import load_autoencoder

    ae, path = load_autoencoder(ae_run, device="cpu")
    test = digits(train=False).float() / 16 * 2 - 1
    rec = _reconstruct(ae, test)
    return dict(run=str(path), test_images=len(test), psnr_heldout=psnr(test, rec).mean().item())


def _confidence(images: torch.Tensor) -> float | None:
    """The digits classifier's mean max-softmax on images in [0, 1]; None without it."""
    try:
        from sde.metrics import digits as digits_metrics
    except ImportError:
        return None
    logits = digits_metrics.logits(images, centered=False)
    return logits.softmax(-1).max(-1).values.mean().item()


def sample_run_row(run_dir, *, n: int, steps: int) -> dict:
    """`n` PC samples of a run (decoded for a latent run), their classifier confidence, and the
    training throughput of the run's metrics.json."""
    from sde.runs import load_run
    from sde.runs.sampling import draw_samples

    loaded = load_run(run_dir, device="cpu")
    start = time.perf_counter()
    images, *_ = draw_samples(loaded, sampler="pc", sampler_options={"steps": steps}, n=n,
                              seed=0, batch_size=n, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    logged = json.loads((Path(run_dir) / "metrics.json").read_text())["history"]
    throughput = [r["img_per_s"] for r in logged if "img_per_s" in r]
    return dict(run=loaded.config["experiment"], space=str(list(loaded.shape)),
                train_img_per_s=statistics.median(throughput) if throughput else None,
                sample_seconds=round(seconds, 1),
                classifier_confidence=_confidence(images))


def _table(rows) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows])


def _write_json(path: Path, result: dict) -> None:
    """Atomically: a temporary file in the same folder, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ae-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed score steps per space")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ae-run", default=None, help="an ae_digits run: held-out PSNR")
    parser.add_argument("--ldm-run", default=None, help="an ldm_digits run: decoded samples")
    parser.add_argument("--pixel-run", default=None, help="a vp_digits run, for comparison")
    parser.add_argument("--n", type=int, default=256, help="samples per trained run")
    parser.add_argument("--sample-steps", type=int, default=250)
    parser.add_argument("--runs-only", action="store_true", help="skip sections 1 and 2")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"config": vars(args) | {"json": str(args.json), "torch": torch.__version__}}
    if not args.runs_only:
        result["reconstruction"] = reconstruction_rows(args.ae_steps, args.batch_size)
        result["score_step"] = step_rows(args.batch_size, args.repeats)
    if args.ae_run:
        result["ae_run"] = [ae_run_row(args.ae_run)]
    samples = [sample_run_row(r, n=args.n, steps=args.sample_steps)
               for r in (args.ldm_run, args.pixel_run) if r]
    if samples:
        result["trained_runs"] = samples
    for key, rows in result.items():
        if key != "config":
            print(_table(rows), "\n")
    if args.json is not None:
        _write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

"""The latent experiments end to end: ae_* and ldm_* compose and train 2 steps, the autoencoder
run resumes bit-exactly, the LDM run stores and reuses its scale factor, a latent run samples and
decodes through `sample_run`, and `evaluate_run` reports its likelihood as a latent one."""

import json
import math
import os
import signal

import pytest
import torch
from hydra import compose, initialize_config_dir

import sde.training.autoencoder as ae_loop
from sde.runs.paths import CONFIG_DIR
from sde.train import run
from sde.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAST = ["debug=fast", "logger=none", "trainer.eval_every=0", "trainer.sample_every=0",
        "trainer.checkpoint_every=0", "trainer.num_samples=0"]
TINY_AE = ["model.ch=8", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.num_groups=4",
           "loss.discriminator.ndf=4"]
TINY_UNET = ["model.nf=8", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
             "model.attn_resolutions=[]", "model.num_groups=4"]
CIFAR_AE = [*TINY_AE, "model.z_channels=3", "model.embed_dim=3"]  # latents (3, 16, 16)


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def history(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["history"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    from tests.training.conftest import write_fake_cifar

    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root / "cifar-10-batches-py")
    return root


@pytest.fixture(scope="module")
def ae_digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ae") / "ae_digits"
    run(compose_train(["experiment=ae_digits", *FAST, *TINY_AE, "trainer.steps=2"]), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def ldm_digits_run(tmp_path_factory, ae_digits_run):
    run_dir = tmp_path_factory.mktemp("ldm") / "ldm_digits"
    run(compose_train(["experiment=ldm_digits", f"autoencoder={ae_digits_run}", *FAST,
                       *TINY_UNET, "trainer.steps=2", "sampler.steps=25"]), run_dir)
    return run_dir


@pytest.mark.parametrize("name", ["ae_digits", "ae_cifar", "ldm_digits", "ldm_cifar"])
def test_latent_experiments_compose(name):
    cfg = compose_train([f"experiment={name}", "autoencoder=/some/run"]
                        if name.startswith("ldm") else [f"experiment={name}"])
    assert cfg.experiment == name
    if name.startswith("ae"):
        assert cfg.task == "autoencoder" and cfg.loss._target_ == "sde.latent.AutoencoderLoss"
    else:
        assert cfg.autoencoder == "/some/run" and cfg.cache_latents is False


def test_ldm_without_an_autoencoder_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="pass autoencoder=RUN"):
        run(compose_train(["experiment=ldm_digits", *FAST]), tmp_path / "run")


def test_ae_digits_runs_two_steps(ae_digits_run):
    ckpt = load_checkpoint(latest_checkpoint(ae_digits_run))
    assert ckpt["step"] == 2 and ckpt["config"]["task"] == "autoencoder"
    assert set(ckpt["loss"]) == {"logvar", "discriminator"}
    rows = history(ae_digits_run)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows) and "ema_psnr" in rows[-1]


@pytest.mark.slow
def test_ae_cifar_and_ldm_cifar_run_two_steps(tmp_path, cifar_root):
    data = [f"data.root={cifar_root}"]
    run(compose_train(["experiment=ae_cifar", *FAST, *CIFAR_AE, *data, "trainer.steps=2"]),
        tmp_path / "ae")
    last = run(compose_train(["experiment=ldm_cifar", f"autoencoder={tmp_path / 'ae'}", *FAST,
                              *TINY_UNET, "model.image_size=16", *data, "trainer.steps=2"]),
               tmp_path / "ldm")
    assert last["step"] == 2 and math.isfinite(last["loss"])
    config = load_checkpoint(latest_checkpoint(tmp_path / "ldm"))["config"]
    assert config["data"]["shape"] == [3, 16, 16] and config["latent"]["image_shape"] == [3, 32, 32]


def test_ae_resume_after_sigterm_is_bit_exact(tmp_path, monkeypatch):
    """The discriminator starts at step 3, so its optimiser is resumed too."""
    over = ["experiment=ae_digits", *FAST, *TINY_AE, "model.dropout=0.1", "loss.disc_start=3",
            "trainer.steps=6", "trainer.checkpoint_every=100"]
    run(compose_train(over), tmp_path / "whole")
    real, calls = ae_loop.autoencoder_step, {"n": 0}

    def sigterm_at_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ae_loop, "autoencoder_step", sigterm_at_3)
        assert run(compose_train(over), tmp_path / "split")["step"] == 3
    assert run(compose_train(over), tmp_path / "split")["step"] == 6
    # the stop at step 3 adds an eval there: compare the training logs, and the final PSNR
    logs = lambda d: [{k: v for k, v in r.items() if k not in ("img_per_s", "ema_psnr")}
                      for r in history(d)]
    assert logs(tmp_path / "split") == logs(tmp_path / "whole")  # exactly
    assert history(tmp_path / "split")[-1]["ema_psnr"] == history(tmp_path / "whole")[-1]["ema_psnr"]
    assert "d_loss" in history(tmp_path / "whole")[-1]
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / d)) for d in ("whole", "split"))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert all(torch.equal(a["loss"]["discriminator"][k], b["loss"]["discriminator"][k])
               for k in a["loss"]["discriminator"])


def _first_batch_scale(ae_run, seed=0, batch_size=4):
    """1 / std of the posterior samples of the first batch, from the autoencoder's moments."""
    from sde.data import Dataset, step_generator
    from sde.latent.data import LATENT_STREAM

    ckpt = load_checkpoint(latest_checkpoint(ae_run))
    from hydra.utils import instantiate

    ae = instantiate(ckpt["config"]["model"])
    ae.load_state_dict(ckpt["ema"])
    images = Dataset(**{k: v for k, v in ckpt["config"]["data"].items() if k != "fingerprint"})
    x = images.batch(0, batch_size, seed=seed)
    with torch.no_grad():
        mean, logvar = ae.quant_conv(ae.encoder(x)).chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=step_generator(seed, 0, 0, LATENT_STREAM))
    z = mean + torch.exp(0.5 * logvar) * noise
    return 1.0 / z.flatten().std().item(), ae


def test_ldm_stores_the_first_batch_scale_factor(ldm_digits_run, ae_digits_run):
    ckpt = load_checkpoint(latest_checkpoint(ldm_digits_run))
    config = ckpt["config"]
    assert ckpt["step"] == 2 and [r["step"] for r in history(ldm_digits_run)] == [1, 2]
    expected, _ = _first_batch_scale(ae_digits_run)
    assert config["latent"]["scale_factor"] == pytest.approx(expected, rel=1e-5)
    assert config["latent"]["autoencoder"].startswith(str(ae_digits_run.resolve()))
    assert config["data"]["shape"] == [2, 4, 4] and config["latent"]["image_shape"] == [1, 8, 8]


def test_ldm_resume_reuses_the_stored_scale_factor(tmp_path, ae_digits_run, monkeypatch):
    import sde.latent.space as space_lib

    over = ["experiment=ldm_digits", f"autoencoder={ae_digits_run}", *FAST, *TINY_UNET]
    run(compose_train([*over, "trainer.steps=1"]), tmp_path / "ldm")
    stored = load_checkpoint(latest_checkpoint(tmp_path / "ldm"))["config"]["latent"]

    def refit(z):
        raise AssertionError("the scale factor was refitted on resume")

    monkeypatch.setattr(space_lib, "latent_scale_factor", refit)
    assert run(compose_train([*over, "trainer.steps=2"]), tmp_path / "ldm")["step"] == 2
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "ldm"))["config"]["latent"]
    assert resumed["scale_factor"] == stored["scale_factor"]


@pytest.mark.slow  # encodes all 1500 digits and trains twice: ~5-20 s on a busy CPU
def test_cached_latents_are_written_and_read(tmp_path, ae_digits_run):
    from safetensors.torch import load_file

    over = ["experiment=ldm_digits", f"autoencoder={ae_digits_run}", "cache_latents=true", *FAST,
            *TINY_UNET]
    run(compose_train([*over, "trainer.steps=1"]), tmp_path / "ldm")
    cache = load_file(str(tmp_path / "ldm" / "latents.safetensors"))
    assert cache["latents"].shape == (1500, 2, 4, 4)
    config = load_checkpoint(latest_checkpoint(tmp_path / "ldm"))["config"]
    assert float(cache["scale_factor"]) == pytest.approx(config["latent"]["scale_factor"])
    assert config["latent"]["cache"] is True
    assert math.isfinite(run(compose_train([*over, "trainer.steps=2"]), tmp_path / "ldm")["loss"])


def test_latent_run_samples_and_decodes(ldm_digits_run, ae_digits_run, tmp_path):
    """sample_run's images are decoder(z / s) mapped to [0, 1], z the latent samples."""
    import numpy as np

    from sde.runs import load_run, sample_run
    from sde.runs.env import sample_seeds
    from sde.runs.sampling import generate

    record = sample_run(ldm_digits_run, n=3, batch_size=3, sampler_options={"steps": 25},
                        out=tmp_path / "s.npz", device="cpu", progress=False)
    images = torch.from_numpy(np.load(record["npz"])["samples"])
    assert images.shape == (3, 1, 8, 8)
    loaded = load_run(ldm_digits_run, device="cpu")
    z, _, _ = generate("pc", loaded.sde, loaded.score_fn, loaded.shape, seeds=sample_seeds(0, 3),
                       batch_size=3, options={"steps": 25}, device="cpu", progress=False)
    s = load_checkpoint(latest_checkpoint(ldm_digits_run))["config"]["latent"]["scale_factor"]
    _, ae = _first_batch_scale(ae_digits_run)
    with torch.no_grad():
        expected = ((ae.decode(z / s) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)


def test_latent_mask_is_known_only_where_all_its_pixels_are():
    from sde.runs.inverse import latent_mask, make_mask

    expected = torch.ones(1, 2, 4, 4)
    expected[..., 1:3, 1:3] = 0  # the unknown 4x4 centre of an 8x8 image, f = 2
    assert torch.equal(latent_mask(make_mask("center", (1, 8, 8)), 2, 2), expected)
    one = torch.ones(1, 3, 8, 8)
    one[0, 2, 5, 2] = 0  # one unknown pixel, in one channel: its whole 4x4 cell is unknown
    expected = torch.ones(1, 4, 2, 2)
    expected[..., 1, 0] = 0
    assert torch.equal(latent_mask(one, 4, 4), expected)


def test_latent_run_inpaints_in_latent_space(ldm_digits_run, tmp_path, monkeypatch):
    """task=inpaint on a latent run: the masked images are encoded, the latent cells whose pixels
    are all known are kept, the rest sampled; the decoded samples get the known pixels back."""
    import numpy as np

    import sde.sampling.controllable as controllable
    from sde.runs import load_run
    from sde.runs.inverse import inverse_run

    seen, real = {}, controllable.inpaint

    def spy(sde, score_fn, y, mask, **kwargs):
        x, nfe = real(sde, score_fn, y, mask, **kwargs)
        seen.update(y=y, mask=mask, x=x)
        return x, nfe

    monkeypatch.setattr(controllable, "inpaint", spy)
    record = inverse_run(ldm_digits_run, task="inpaint", mask="left", n=2, device="cpu",
                         sampler_options={"steps": 25}, out=tmp_path / "inpaint.npz")
    with np.load(record["npz"]) as f:
        inputs, known, samples = (torch.from_numpy(f[k]) for k in ("inputs", "mask", "samples"))
    assert samples.shape == inputs.shape == (2, 1, 8, 8)
    assert torch.equal(samples[..., :4], inputs[..., :4])  # the known left half
    expected = torch.zeros(2, 2, 4, 4)
    expected[..., :2] = 1
    assert torch.equal(seen["mask"].float(), expected)
    run = load_run(ldm_digits_run, device="cpu")
    torch.testing.assert_close(seen["y"][..., :2], run.scaler(inputs * known)[..., :2])
    torch.testing.assert_close(samples[..., 4:], run.inverse_scaler(seen["x"])[..., 4:])
    with pytest.raises(ValueError, match="not defined on a latent run"):
        inverse_run(ldm_digits_run, task="colorize", n=1, device="cpu",
                    sampler_options={"steps": 5}, out=tmp_path / "colorize.npz")


def test_evaluate_reports_latent_likelihood(ldm_digits_run):
    from sde.runs import evaluate_run

    values = evaluate_run(ldm_digits_run, device="cpu", progress=False, likelihood_n=4,
                          batch_size=4)
    assert {"latent_nll", "latent_bpd", "latent_nfe"} <= set(values)
    assert not {"bpd", "nll"} & set(values)
    assert values["latent_bpd"] == pytest.approx(values["latent_nll"] / (32 * math.log(2)))
    with pytest.raises(ValueError, match="latent_nll"):
        evaluate_run(ldm_digits_run, metrics=["bpd"], device="cpu", progress=False)


def test_fid_scores_the_decoded_samples_against_the_training_images(ldm_digits_run, tmp_path,
                                                                   monkeypatch):
    """sde.evaluate metrics=[fid] on a latent run hands FID the decoded images (what sde.sample
    writes for the same seeds) and the training digits as reference, never latents (the FID
    formula itself is checked in tests/cli/test_sample_evaluate.py)."""
    import numpy as np

    import sde.metrics.fid
    import sde.metrics.inception
    import sde.runs.evaluate as evaluate_lib
    from sde.runs import evaluate_run, sample_run

    seen = {}

    def features(net, batches, **kwargs):  # what the Inception would see
        seen["samples"] = torch.cat(list(batches))
        return torch.zeros(len(seen["samples"]), 2048), torch.zeros(len(seen["samples"]), 1008)

    def quality(features, logits, net, data_cfg, **kwargs):
        seen["reference"] = evaluate_lib.load_split(data_cfg, train=True)
        return {"fid": 0.0}

    monkeypatch.setattr(sde.metrics.inception, "load_inception", lambda *a, **k: None)
    monkeypatch.setattr(sde.metrics.fid, "extract_features", features)
    monkeypatch.setattr(evaluate_lib, "feature_quality", quality)
    options = {"steps": 25}
    evaluate_run(ldm_digits_run, metrics=["fid"], sampler_options=options, n=3, batch_size=3,
                 device="cpu", progress=False)
    record = sample_run(ldm_digits_run, n=3, batch_size=3, sampler_options=options,
                        out=tmp_path / "s.npz", device="cpu", progress=False)
    expected = torch.from_numpy(np.load(record["npz"])["samples"])
    assert seen["samples"].shape == (3, 1, 8, 8)
    torch.testing.assert_close(seen["samples"], expected, atol=1e-6, rtol=0)
    assert seen["reference"].shape == (1500, 1, 8, 8)


def test_an_autoencoder_run_is_not_a_score_run(ae_digits_run, ldm_digits_run):
    from sde.runs import load_run
    from sde.runs.load import load_autoencoder

    with pytest.raises(CheckpointError, match="autoencoder run"):
        load_run(ae_digits_run)
    with pytest.raises(CheckpointError, match="not an autoencoder run"):
        load_autoencoder(ldm_digits_run)


def _ddp_worker(rank, world, port, run_dir, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    captured = {}
    real = ae_loop.fit_autoencoder

    def fit(**kwargs):
        captured.update(ae=kwargs["autoencoder"], disc=kwargs["loss_fn"].discriminator)
        return real(**kwargs)

    ae_loop.fit_autoencoder = fit
    cfg = compose_train(["experiment=ae_digits", *FAST, *TINY_AE, "loss.disc_start=2",
                         "trainer.steps=3", "trainer.batch_size=8", "trainer.device=cpu"])
    last = run(cfg, run_dir)
    disc = captured["disc"]  # parameters only: BatchNorm statistics are per rank
    torch.save({"ae": captured["ae"].state_dict(), "last": last,
                "disc": {k: v for k, v in disc.named_parameters()}},
               f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_ae_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path)), nprocs=2,
             join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("ae", "disc"):
        for name, value in r0[part].items():
            assert torch.equal(value, r1[part][name]), (part, name)
    assert r0["last"]["step"] == 3 and r0["last"]["loss"] == r1["last"]["loss"]
    assert "d_loss" in r0["last"]


def test_latent_batch_is_the_encoded_image_batch_of_its_step(ae_digits_run, tmp_path):
    """batch(k) = s (mean + std * noise) of the image batch of step k, noise from (seed, rank, k):
    a pure function of the step, hence exactly resumable."""
    from sde.data import Dataset, step_generator
    from sde.latent.data import LATENT_STREAM, latent_dataset

    s, ae = _first_batch_scale(ae_digits_run)
    images = Dataset(name="digits", levels=17, centered=True)
    data = latent_dataset(images, ae_digits_run, cache=False, run_dir=tmp_path, seed=0,
                          batch_size=4, device="cpu")
    z = data.batch(3, 5, seed=0, rank=1, world=2)
    with torch.no_grad():
        mean, logvar = ae.quant_conv(ae.encoder(images.batch(3, 5, seed=0, rank=1, world=2))).chunk(2, 1)
    noise = torch.randn(mean.shape, generator=step_generator(0, 1, 3, LATENT_STREAM))
    torch.testing.assert_close(z, s * (mean + torch.exp(0.5 * logvar) * noise), rtol=1e-5, atol=1e-6)
    assert torch.equal(z, data.batch(3, 5, seed=0, rank=1, world=2))

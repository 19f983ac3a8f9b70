"""Converted score_sde_pytorch checkpoints are runs of this codebase: `load_run(DIR)` (EMA) and
`load_run(DIR, ema=False)` reproduce the scores that codebase computed for the fixtures in
../shared/fixtures/score_sde_pytorch, and `python -m sde.sample run=DIR` draws from them."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sde.convert.__main__ import main
from sde.convert.export import convert_run
from sde.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "score_sde_pytorch"
NAMES = ["vp_cifar10_ddpmpp_continuous", "subvp_cifar10_ddpmpp_continuous",
         "ve_cifar10_ncsnpp_continuous", "vp_cifar10_ddpm",
         "ve_church_ncsnpp_continuous"]  # output_skip / input_skip: the high-resolution layout

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(),
    reason=f"score_sde fixtures not found at {FIXTURES} (../shared from the repository root)")


def _convert(name, out):
    return convert_run(FIXTURES / f"{name}.pth", str(FIXTURES / f"{name}.json"), out)


def _rel_per_sample(a, b):
    """Relative error of each example, (B,)."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_converted_run_reproduces_reference_scores(name, tmp_path):
    from sde.run import load_run

    out = tmp_path / "run"
    if name == NAMES[0]:  # through the command line's main()
        argv = ["score_sde", str(FIXTURES / f"{name}.pth"),
                f"config={FIXTURES / f'{name}.json'}", f"out={out}"]
        assert main(argv) == 0
    else:
        _convert(name, out)
    ckpt = load_checkpoint(next((out / "checkpoints").glob("ckpt_*.pt")))
    assert ckpt["step"] == 1234 and (out / "config.yaml").is_file()
    assert ckpt["config"]["converted_from"]["step"] == 1234
    io = dict(np.load(FIXTURES / f"{name}_io.npz"))
    x, t = torch.from_numpy(io["x"]), torch.from_numpy(io["t"])
    raw_vs_ema = _rel_per_sample(torch.from_numpy(io["score_model_weights"]),
                                 torch.from_numpy(io["score_ema_weights"]))
    assert raw_vs_ema.min() > 1e-3  # the two weight sets are told apart
    for ema, key in [(True, "score_ema_weights"), (False, "score_model_weights")]:
        run = load_run(out, device="cpu") if ema else load_run(out, ema=False, device="cpu")
        assert run.ema is ema and run.step == 1234
        with torch.no_grad():
            ours = run.score_fn(x, t)
        errors = _rel_per_sample(ours, torch.from_numpy(io[key]))
        assert errors.max() < 1e-5, (name, key, errors.tolist())


def test_bad_checkpoints_stop_with_the_key(tmp_path):
    name = "ve_cifar10_ncsnpp_continuous"
    ckpt = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    config = str(FIXTURES / f"{name}.json")
    cases = {
        "shape": ("module.all_modules.4.Conv_0.weight", torch.zeros(1, 2, 3, 3),
                  r"all_modules\.4.*shape"),
        "unmapped": ("module.all_modules.4.Extra_0.weight", torch.zeros(3),
                     r"all_modules\.4\.Extra_0\.weight"),
    }
    for case, (key, value, message) in cases.items():
        bad = {**ckpt, "model": {**ckpt["model"], key: value}}
        torch.save(bad, tmp_path / f"{case}.pth")
        with pytest.raises(ValueError, match=message):
            convert_run(tmp_path / f"{case}.pth", config, tmp_path / case)
    short = {**ckpt, "ema": {**ckpt["ema"], "shadow_params": ckpt["ema"]["shadow_params"][:-1]}}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="EMA holds"):
        convert_run(tmp_path / "short.pth", config, tmp_path / "short")
    assert "EMA" not in _raw_message(convert_run, config, tmp_path, ckpt)
    torch.save({"model": ckpt["model"], "anything": object}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_run(tmp_path / "pickle.pth", config, tmp_path / "pickle")
    assert not any(tmp_path.glob("*/checkpoints/*.pt"))


def test_command_line_errors(tmp_path, capsys):
    src = str(FIXTURES / "vp_cifar10_ddpm.pth")
    assert main(["score_sde", src, "config=vp/cifar100", f"out={tmp_path}"]) == 2
    assert "unknown score_sde config 'vp/cifar100'" in capsys.readouterr().err
    assert main(["score_sde", src, f"out={tmp_path}"]) == 2
    assert "missing config=" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["score_sde", src, f"config={FIXTURES / 'vp_cifar10_ddpm.json'}",
                 f"out={out}"]) == 0
    assert main(["score_sde", src, f"config={FIXTURES / 'vp_cifar10_ddpm.json'}",
                 f"out={out}"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["score_sde", "--list"]) == 0
    assert "ve/ffhq_ncsnpp_continuous" in capsys.readouterr().out


def test_sample_a_converted_run(tmp_path):
    out = tmp_path / "run"
    _convert("ve_cifar10_ncsnpp_continuous", out)
    npz = tmp_path / "samples.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "sde.sample", f"run={out}", "n=2", "batch_size=2",
           "sampler.steps=4", "progress=false", "device=cpu", f"out={npz}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    samples = np.load(npz)["samples"]
    assert samples.shape == (2, 3, 16, 16) and np.isfinite(samples).all()
    assert samples.min() >= 0 and samples.max() <= 1 and npz.with_suffix(".png").is_file()


def _raw_message(convert_run, config, tmp_path, ckpt):
    """The message of a raw-weights shape error (to tell the EMA's own message from it)."""
    key = "module.all_modules.4.Conv_0.weight"
    bad = {**ckpt, "model": {**ckpt["model"], key: torch.zeros(1, 2, 3, 3)}}
    torch.save(bad, tmp_path / "raw.pth")
    with pytest.raises(ValueError) as err:
        convert_run(tmp_path / "raw.pth", config, tmp_path / "raw")
    return str(err.value)


@pytest.mark.parametrize("name", ["ve_cifar10_ncsnpp_continuous", "ve_church_ncsnpp_continuous"])
def test_ema_shape_errors_name_the_ema_parameter(name, tmp_path):
    """Raw weights fine, one EMA shadow parameter of the wrong shape: the error is the EMA's own
    (names ema.shadow_params[k] and its raw key), not the raw-weights shape message."""
    ckpt = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    config = str(FIXTURES / f"{name}.json")
    shadow = list(ckpt["ema"]["shadow_params"])
    # score_sde's EMA is model.parameters(): the state dict without sigmas and the frozen W
    trainable = [key for key in ckpt["model"] if key not in ("module.sigmas",
                                                             "module.all_modules.0.W")]
    k = trainable.index("module.all_modules.4.Dense_0.bias")
    shadow[k] = torch.zeros(shadow[k].numel() + 1)
    bad = {**ckpt, "ema": {**ckpt["ema"], "shadow_params": shadow}}
    torch.save(bad, tmp_path / "ema.pth")
    with pytest.raises(ValueError) as err:
        convert_run(tmp_path / "ema.pth", config, tmp_path / "ema")
    message = str(err.value)
    assert message.startswith(f"EMA parameter ema.shadow_params[{k}] (for "
                              "'all_modules.4.Dense_0.bias') is shaped"), message
    assert "in the checkpoint," not in message  # the raw-weights wording
    assert "in the checkpoint," in _raw_message(convert_run, config, tmp_path, ckpt)
    short = {**ckpt, "ema": {**ckpt["ema"], "shadow_params": shadow[:3]}}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"^EMA holds 3 tensors \(ema.shadow_params\)"):
        convert_run(tmp_path / "short.pth", config, tmp_path / "short")
    assert not any(tmp_path.glob("*/checkpoints/*.pt"))

"""Released score_sde_pytorch checkpoints convert exactly: our score_fn(x, t) reproduces the
scores that codebase computed (fixtures in ../shared/fixtures/score_sde_pytorch)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sde import VESDE, VPSDE, SubVPSDE
from sde.convert.score_sde import (
    build_model,
    convert_checkpoint,
    convert_state_dict,
    model_spec,
    score_fn_options,
    trainable_reference_keys,
)
from sde.models import get_score_fn

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "score_sde_pytorch"
NAMES = ["vp_cifar10_ddpmpp_continuous", "subvp_cifar10_ddpmpp_continuous",
         "ve_cifar10_ncsnpp_continuous", "vp_cifar10_ddpm",
         "ve_church_ncsnpp_continuous"]  # output_skip / input_skip: the high-resolution layout

needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"score_sde fixtures not found at {FIXTURES} (../shared)")


def _load(name):
    config = json.loads((FIXTURES / f"{name}.json").read_text())
    checkpoint = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    io = dict(np.load(FIXTURES / f"{name}_io.npz"))
    return config, checkpoint, io


def _sde(config):
    m, name = config["model"], config["training"]["sde"]
    if name == "vesde":
        return VESDE(m["sigma_min"], m["sigma_max"], m["num_scales"])
    cls = {"vpsde": VPSDE, "subvpsde": SubVPSDE}[name]
    return cls(m["beta_min"], m["beta_max"], m["num_scales"])


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@needs_fixtures
@pytest.mark.parametrize("name", NAMES)
def test_converted_scores_match_the_reference(name):
    config, checkpoint, io = _load(name)
    converted = convert_checkpoint(checkpoint, config)
    model, sde = converted["model"].eval(), _sde(config)
    score_fn = get_score_fn(sde, model, **converted["score_fn_options"])
    x, t = torch.from_numpy(io["x"]), torch.from_numpy(io["t"])
    assert converted["step"] == checkpoint["step"]
    pairs = [("state_dict", "score_model_weights"), ("ema_state_dict", "score_ema_weights")]
    for weights, key in pairs:
        model.load_state_dict(converted[weights])
        with torch.no_grad():
            ours = score_fn(x, t)
        ref = torch.from_numpy(io[key])
        assert _rel(ours, ref) < 1e-5, (name, key)
        for i in range(len(t)):  # every (x, t) pair on its own, small t included
            assert _rel(ours[i], ref[i]) < 1e-5, (name, key, t[i].item())


@needs_fixtures
@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_and_ema_layout(name):
    config, checkpoint, _ = _load(name)
    model = build_model(config)
    n_ours = sum(p.numel() for p in model.parameters())
    n_frozen = sum(b.numel() for k, b in model.named_buffers() if k.endswith("fourier.W"))
    assert n_ours + n_frozen == config["n_params"]
    keys = trainable_reference_keys(checkpoint["model"], model=model)
    assert len(keys) == len(checkpoint["ema"]["shadow_params"])
    assert [p.numel() for p in checkpoint["ema"]["shadow_params"]] == [
        checkpoint["model"]["module." + k].numel() for k in keys]


@needs_fixtures
def test_bad_checkpoints_name_the_key():
    config, checkpoint, _ = _load("ve_cifar10_ncsnpp_continuous")
    model = build_model(config)
    sd = dict(checkpoint["model"])
    bad = dict(sd)
    bad["module.all_modules.4.Conv_0.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"all_modules\.4.*shape"):
        convert_state_dict(bad, model=model)
    extra = dict(sd)
    extra["module.all_modules.4.Extra_0.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"all_modules\.4\.Extra_0\.weight"):
        convert_state_dict(extra, model=model)
    missing = {k: v for k, v in sd.items() if k != "module.all_modules.19.bias"}
    with pytest.raises(ValueError, match="out_conv.bias"):
        convert_state_dict(missing, model=model)
    stray = dict(sd)
    stray["module.foo"] = torch.zeros(1)
    with pytest.raises(ValueError, match="foo"):
        convert_state_dict(stray, model=model)


def _released(sde, continuous, name="ncsnpp", **model):
    """A score_sde CIFAR-10 config in the fixtures' JSON layout."""
    base = dict(name=name, nf=128, ch_mult=[1, 2, 2, 2], num_res_blocks=4, attn_resolutions=[16],
                dropout=0.1, resamp_with_conv=True, conditional=True, nonlinearity="swish")
    return {"model": {**base, **model}, "data": {"image_size": 32, "num_channels": 3,
                                                  "centered": sde != "vesde"},
            "training": {"sde": sde, "continuous": continuous}}


NCSNPP_VE = dict(scale_by_sigma=True, fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
                 resblock_type="biggan", progressive="none", progressive_input="residual",
                 progressive_combine="sum", init_scale=0.0)


def test_score_fn_options_follow_score_sde():
    cases = [
        (_released("vpsde", True, scale_by_sigma=False),
         {"prediction": "eps", "time_input": "t", "std": "score_sde"}),
        (_released("subvpsde", True),
         {"prediction": "eps", "time_input": "t", "std": "score_sde"}),
        (_released("vpsde", False, "ddpm"),
         {"prediction": "eps", "time_input": "step", "std": "exact"}),
        (_released("vesde", True, **NCSNPP_VE),
         {"prediction": "score", "time_input": "sigma", "std": "exact"}),
        (_released("vesde", False, **NCSNPP_VE),
         {"prediction": "scaled_score", "time_input": "smld_step", "std": "exact"}),
    ]
    for config, expected in cases:
        assert score_fn_options(config) == expected


def test_discrete_ve_moves_scale_by_sigma_into_the_score_fn():
    """ve/cifar10_ncsnpp: positional embedding of the step, output / sigmas[step] in score_sde;
    here a network without scale_by_sigma and prediction='scaled_score'."""
    config = _released("vesde", False, embedding_type="positional", **NCSNPP_VE)
    target, kwargs = model_spec(config)
    assert target.endswith("NCSNpp") and kwargs["scale_by_sigma"] is False
    assert kwargs["centered"] is False and kwargs["embedding_type"] == "positional"
    target, kwargs = model_spec(_released("vesde", False, "ddpm", scale_by_sigma=True))
    assert target.endswith("DDPM")
    with pytest.raises(ValueError, match="scale_by_sigma"):
        model_spec(_released("vpsde", False, "ddpm", scale_by_sigma=True))
    with pytest.raises(ValueError, match="not supported"):
        model_spec(_released("vesde", False, "ncsnv2"))

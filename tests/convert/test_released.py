"""The released score_sde config table and its translation: every name maps onto an experiment of
this codebase that already is the paper's model, and bad configs fail with clear messages."""

import json

import pytest
import torch
from hydra.utils import instantiate

from sde.convert.export import compose_experiment, merge_sections, run_config
from sde.convert.released import RELEASED, load_config, normalize_name, released
from sde.convert.translate import translate

# trainable parameters of the released networks (the CIFAR-10 counts are those score_sde prints)
N_PARAMS = {
    "vp/cifar10_ddpmpp_continuous": 61_804_419,
    "vp/cifar10_ddpmpp_deep_continuous": 106_632_579,
    "subvp/cifar10_ddpmpp_deep_continuous": 106_632_579,
    "vp/ddpm/cifar10": 35_218_947,
    "ve/cifar10_ncsnpp_continuous": 62_758_787,
    "ve/cifar10_ncsnpp_deep_continuous": 107_586_947,
}
_COMPARED = {"data": ("name", "shape", "levels", "centered", "random_flip", "dequantize"),
             "trainer": ("batch_size", "ema_decay"),
             "sampler": ("predictor", "corrector", "snr", "eps", "n_steps", "denoise")}


# converted continuous VP / sub-VP runs compute std(t) with score_sde's float32 rounding
# (score.std=score_sde) to reproduce its scores exactly; trained runs use the exact std
_EXPECTED = {"score.std": ("exact", "score_sde")}


def _differences(composed: dict, merged: dict) -> dict:
    """Keys whose value the translation of the paper's config changes in the experiment."""
    diffs = {}
    for section in ("sde", "model", "score", "loss"):
        for key in set(composed[section]) | set(merged[section]):
            if _EXPECTED.get(f"{section}.{key}") == (composed[section].get(key),
                                                     merged[section].get(key)):
                continue
            if composed[section].get(key) != merged[section].get(key):
                diffs[f"{section}.{key}"] = (composed[section].get(key), merged[section].get(key))
    for section, keys in _COMPARED.items():
        for key in keys:
            if composed[section].get(key) != merged[section].get(key):
                diffs[f"{section}.{key}"] = (composed[section].get(key), merged[section].get(key))
    return diffs


@pytest.mark.parametrize("name", list(RELEASED))
def test_experiment_is_the_released_model(name):
    """Composing the mapped experiment (plus its overrides) already gives the paper's SDE,
    network, score parametrisation, loss and data: the translation changes nothing."""
    entry = RELEASED[name]
    composed = compose_experiment(entry.experiment, entry.overrides)
    merged = merge_sections(composed, translate(entry.config))
    assert _differences(composed, merged) == {}, name


# one name per distinct network (the four 256x256 configs share theirs)
NETWORKS = [n for n in RELEASED if n not in ("ve/bedroom_ncsnpp_continuous",
                                            "ve/ffhq_256_ncsnpp_continuous",
                                            "ve/celebahq_256_ncsnpp_continuous")]


@pytest.mark.parametrize("name", NETWORKS)
def test_translated_network_builds(name):
    translated = translate(RELEASED[name].config)
    with torch.device("meta"):
        model = instantiate(translated["model"])
    sde = instantiate(translated["sde"])
    n_params = sum(p.numel() for p in model.parameters())
    if name in N_PARAMS:
        assert n_params == N_PARAMS[name]
    size = RELEASED[name].config["data"]["image_size"]
    assert translated["data"]["shape"] == [3, size, size]
    assert sde.N == RELEASED[name].config["model"]["num_scales"]


def test_translation_of_each_kind():
    vp = translate(released("vp/cifar10_ddpmpp_continuous").config)
    assert vp["sde"] == {"_target_": "sde.sdes.VPSDE", "beta_min": 0.1, "beta_max": 20.0,
                         "N": 1000, "zero_terminal_snr": False}
    assert vp["score"] == {"prediction": "eps", "time_input": "t", "std": "score_sde",
                           "time_scale": 999.0}
    assert vp["data"]["centered"] and vp["loss"]["reduce_mean"]
    ve = translate(released("ve/cifar10_ncsnpp_continuous").config)
    assert ve["score"]["prediction"] == "score" and ve["score"]["time_input"] == "sigma"
    assert not ve["data"]["centered"] and not ve["loss"]["reduce_mean"]
    assert ve["model"]["scale_by_sigma"] and ve["trainer"]["ema_decay"] == 0.999
    smld = translate(released("ve/cifar10_ncsnpp").config)
    assert smld["loss"]["_target_"] == "sde.losses.smld_loss"
    assert smld["score"]["time_input"] == "smld_step"
    ddpm = translate(released("vp/ddpm/cifar10").config)
    assert ddpm["loss"]["_target_"] == "sde.losses.ddpm_loss"
    assert ddpm["model"]["_target_"] == "sde.models.ddpm.DDPM"
    church = translate(released("ve/church_ncsnpp_continuous").config)
    assert church["sde"]["sigma_max"] == 380.0 and church["sde"]["N"] == 2000
    assert church["data"]["name"] == "folder" and church["sampler"]["snr"] == 0.075


def test_names_are_normalized():
    assert normalize_name("configs/vp/cifar10_ddpmpp_continuous.py") == \
        "vp/cifar10_ddpmpp_continuous"
    assert normalize_name("configs.vp.ddpm.cifar10") == "vp/ddpm/cifar10"
    assert released("configs/ve/cifar10_ncsnpp_continuous.py").experiment == "ve_cifar"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown score_sde config 'vp/cifar100'.*"
                                         r"vp/cifar10_ddpmpp_continuous"):
        released("vp/cifar100")


def test_bad_json_configs(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"training": {}, "data": {}}))
    with pytest.raises(ValueError, match="lacks the `model` section"):
        load_config(str(path))
    config = json.loads(json.dumps(RELEASED["ve/cifar10_ncsnpp_continuous"].config))
    del config["model"]["sigma_max"]
    with pytest.raises(ValueError, match=r"lacks model\.sigma_max"):
        translate(config)
    config = json.loads(json.dumps(RELEASED["ve/cifar10_ncsnpp_continuous"].config))
    config["model"]["normalization"] = "InstanceNorm++"
    with pytest.raises(ValueError, match=r"model\.normalization='InstanceNorm\+\+' is not"):
        translate(config)
    config["model"]["normalization"], config["training"]["sde"] = "GroupNorm", "edm"
    with pytest.raises(ValueError, match=r"training\.sde='edm' is not supported"):
        translate(config)
    with pytest.raises(ValueError, match="no such JSON file"):
        load_config(str(tmp_path / "missing.json"))


def test_missing_experiment_is_named():
    with pytest.raises(ValueError, match="conf/experiment/nope.yaml does not exist"):
        compose_experiment("nope")


def test_command_line_overrides_win():
    """`data=NAME` swaps the data source but keeps the model's shape and scaling; dotted keys
    are set after the translation."""
    config, base = load_config("ve/cifar10_ncsnpp_continuous")
    run = run_config(config, base, ["data=folder", "data.root=/pictures", "sampler.snr=0.1",
                                    "trainer.batch_size=8"])
    assert run["data"]["name"] == "folder" and run["data"]["root"] == "/pictures"
    assert run["data"]["size"] == 32 and run["data"]["shape"] == [3, 32, 32]
    assert run["data"]["centered"] is False  # the VE model's [0, 1] data
    assert run["sampler"]["snr"] == 0.1 and run["trainer"]["batch_size"] == 8
    assert run["sde"]["sigma_max"] == 50.0 and run["score"]["time_input"] == "sigma"
    with pytest.raises(ValueError, match=r"no key 'sampler\.snrr'"):
        run_config(config, base, ["sampler.snrr=0.1"])
    assert run_config(config, base, ["score.std=exact"])["score"]["std"] == "exact"
    with pytest.raises(ValueError, match="would not fit the converted weights"):
        run_config(config, base, ["model.nf=64"])

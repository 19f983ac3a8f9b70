"""Score networks: shapes, parameter counts of the released configs, and the usual contracts."""


import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from sde.models import DDPM, MLP, NCSNpp
from sde.runs.paths import CONFIG_DIR, group_config

CONF = CONFIG_DIR / "model"


def small(kind: str, image_size: int = 16, in_channels: int = 3, **extra) -> torch.nn.Module:
    """A small network of each family (nf 16 / 32, two resolutions, attention at the lower one)."""
    base = dict(image_size=image_size, in_channels=in_channels, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(image_size // 2,), **extra)
    if kind == "ddpm":
        return DDPM(nf=32, **base)
    options = {
        "ddpmpp": {},
        "ncsnpp": dict(centered=False, fir=True, embedding_type="fourier",
                       progressive_input="residual", scale_by_sigma=True),
        "output_skip": dict(resblock_type="ddpm", progressive="output_skip",
                            progressive_input="input_skip", progressive_combine="cat"),
        "residual": dict(resblock_type="ddpm", fir=True, progressive="residual",
                         progressive_input="residual", skip_rescale=False),
    }[kind]
    return NCSNpp(nf=16, **base, **options)


KINDS = ["ddpmpp", "ncsnpp", "output_skip", "residual", "ddpm"]


def _inputs(batch=2, channels=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)
    return x, torch.rand(batch, generator=g) + 0.1  # cond > 0: NCSN++ embeds log(cond)


def _perturb(model, scale=0.05, seed=0):
    """Move every weight off its (partly zero) initialisation so that outputs are O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("size", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["ddpmpp", "ncsnpp"])
def test_image_shapes(kind, size, channels):
    model = small(kind, image_size=size, in_channels=channels).eval()
    x, c = _inputs(2, channels, size)
    with torch.no_grad():
        assert model(x, c).shape == x.shape


@pytest.mark.parametrize("kind", ["output_skip", "residual", "ddpm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_other_variants_shapes(kind, channels):
    model = small(kind, in_channels=channels).eval()
    x, c = _inputs(2, channels, 16)
    with torch.no_grad():
        assert model(x, c).shape == x.shape


def test_unconditional_network():
    model = small("ddpmpp", conditional=False).eval()
    assert not any("dense" in n or "temb" in n for n, _ in model.named_parameters())
    x, c = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, c), model(x, c + 1.0))  # ignores cond


def test_mlp_shapes_and_conditioning():
    x, c = torch.randn(5, 3), torch.rand(5) * 999
    for emb in ("positional", "fourier"):
        assert MLP(dim=3, hidden=32, num_layers=2, embedding_type=emb)(x, c).shape == (5, 3)
    model = MLP(dim=3, hidden=32, num_classes=4)
    labels = torch.tensor([0, 1, 2, 3, 4])
    assert model(x, c, class_labels=labels).shape == (5, 3)
    torch.testing.assert_close(model(x, c), model(x, c, class_labels=torch.full((5,), 4)))
    with pytest.raises(ValueError, match="shaped"):
        model(torch.randn(5, 2), c)


# name -> (trainable parameters, score_sde's count, which includes the frozen Fourier W)
RELEASED = {
    "ddpmpp": (61_804_419, 61_804_419),
    "ncsnpp": (62_758_787, 62_758_915),
    "ddpmpp_deep": (106_632_579, 106_632_579),
    "ncsnpp_deep": (107_586_947, 107_587_075),
    "ddpm": (35_218_947, 35_218_947),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_parameter_counts_of_the_released_cifar10_configs(name):
    cfg = group_config("model", name)
    with torch.device("meta"):
        model = instantiate(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(b.numel() for n, b in model.named_buffers() if n.endswith("fourier.W"))
    assert (trainable, trainable + frozen) == RELEASED[name]


def test_mlp_config_instantiates():
    model = instantiate(OmegaConf.load(CONF / "mlp.yaml"))
    assert model(torch.randn(4, 2), torch.rand(4)).shape == (4, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_eval_is_deterministic_and_train_uses_dropout(kind):
    model = _perturb(small(kind))
    x, c = _inputs()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, c), model(x, c), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(x, c), model(x, c))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_trainable_parameter(kind):
    model = _perturb(small(kind, num_classes=3)).train()
    x, c = _inputs()
    out = model(x, c, class_labels=torch.tensor([0, 3]))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fourier_weights_stay_frozen_through_training():
    model = small("ncsnpp")
    w0 = model.blocks["fourier"].W.clone()
    assert all("fourier" not in n for n, _ in model.named_parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, c = _inputs()
    model(x, c).square().mean().backward()
    opt.step()
    torch.testing.assert_close(model.blocks["fourier"].W, w0, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["ddpmpp", "ncsnpp", "ddpm"])
def test_bf16_autocast_is_finite_and_close_to_fp32(kind):
    model = _perturb(small(kind)).eval()
    x, c = _inputs()
    with torch.no_grad():
        ref = model(x, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, c)
    assert torch.isfinite(out).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 5e-2


@pytest.mark.parametrize("kind", ["ncsnpp", "ddpm"])
def test_channels_last_gives_the_same_output(kind):
    model = _perturb(small(kind)).eval()
    x, c = _inputs()
    with torch.no_grad():
        ref = model(x, c)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last), c)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["ncsnpp", "ddpm"])
def test_safetensors_round_trip(kind, tmp_path):
    model = _perturb(small(kind)).eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    other = small(kind).eval()
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    x, c = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(other(x, c), model(x, c), rtol=0, atol=0)


def test_class_conditioning_and_null_label():
    model = _perturb(small("ddpmpp", num_classes=10)).eval()
    assert model.label_emb.num_embeddings == 11
    x, c = _inputs()
    with torch.no_grad():
        a = model(x, c, class_labels=torch.tensor([1, 1]))
        b = model(x, c, class_labels=torch.tensor([2, 2]))
        torch.testing.assert_close(model(x, c), model(x, c, class_labels=torch.tensor([10, 10])))
    assert not torch.allclose(a, b)


def test_scale_by_sigma_divides_by_the_conditioning_sigma():
    model = _perturb(small("ncsnpp")).eval()
    x, c = _inputs()
    with torch.no_grad():
        out = model(x, c)
        model.scale_by_sigma = False
        torch.testing.assert_close(out * c[:, None, None, None], model(x, c))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="progressive"):
        NCSNpp(progressive="skip")
    with pytest.raises(ValueError, match="conditional"):
        NCSNpp(conditional=False, num_classes=10)
    with pytest.raises(ValueError, match="divisible"):
        NCSNpp(image_size=20, ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="shaped"):
        small("ddpmpp")(torch.randn(2, 1, 16, 16), torch.rand(2))

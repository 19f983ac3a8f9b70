"""Every NCSN++ layout score_sde_pytorch supports converts one to one.

No fixture holds `progressive='residual'`, `progressive_combine='cat'` or the non-FIR pyramids,
so these tests describe score_sde's `NCSNpp.all_modules` independently (what its `__init__`
appends, in order, with score_sde's parameter names and shapes: `reference_modules` below,
written from score_sde_pytorch's models/ncsnpp.py and layerspp.py, not from our model), fill a
state dict of that layout with random numbers, convert it, and check that every tensor lands
unchanged (up to the NIN -> 1x1 conv transpose and the q/k/v stacking) on the right key of our
network, that no key is left over on either side, and that the network runs.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from sde.convert.score_sde import build_model, convert_ema, convert_state_dict

PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")


def _config(progressive, progressive_input, combine, *, resblock_type="biggan", fir=True,
            conditional=True, embedding_type="fourier", resamp_with_conv=True):
    """A tiny score_sde VE config (JSON layout of the fixtures) with the given layout."""
    model = dict(name="ncsnpp", nf=8, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[4],
                 dropout=0.0, resamp_with_conv=resamp_with_conv, conditional=conditional,
                 nonlinearity="swish", scale_by_sigma=True, fir=fir, fir_kernel=[1, 3, 3, 1],
                 skip_rescale=True, resblock_type=resblock_type, embedding_type=embedding_type,
                 fourier_scale=16, progressive=progressive, progressive_input=progressive_input,
                 progressive_combine=combine, init_scale=0.0)
    return {"model": model, "data": {"image_size": 16, "num_channels": 3, "centered": False},
            "training": {"sde": "vesde", "continuous": embedding_type == "fourier"}}


# --- score_sde's all_modules, from its NCSNpp.__init__ --------------------------------------
def _dense(i, o):
    return {"weight": (o, i), "bias": (o,)}


def _conv(i, o, k=3, prefix=""):
    return {f"{prefix}weight": (o, i, k, k), f"{prefix}bias": (o,)}


def _norm(c, prefix=""):
    return {f"{prefix}weight": (c,), f"{prefix}bias": (c,)}


def _resblock(m, in_ch, out_ch=None, resample=False):
    """ResnetBlockDDPMpp / ResnetBlockBigGANpp: score_sde passes temb_dim = 4 nf always."""
    out_ch = out_ch or in_ch
    keys = {**_norm(in_ch, "GroupNorm_0."), **_conv(in_ch, out_ch, prefix="Conv_0."),
            "Dense_0.weight": (out_ch, 4 * m["nf"]), "Dense_0.bias": (out_ch,),
            **_norm(out_ch, "GroupNorm_1."), **_conv(out_ch, out_ch, prefix="Conv_1.")}
    if m["resblock_type"] == "biggan" and (in_ch != out_ch or resample):
        keys.update(_conv(in_ch, out_ch, 1, prefix="Conv_2."))
    elif m["resblock_type"] == "ddpm" and in_ch != out_ch:
        keys.update({"NIN_0.W": (in_ch, out_ch), "NIN_0.b": (out_ch,)})
    return ("resblock", keys)


def _attn(c):
    keys = _norm(c, "GroupNorm_0.")
    for i in range(4):
        keys.update({f"NIN_{i}.W": (c, c), f"NIN_{i}.b": (c,)})
    return ("attn", keys)


def _resampler(m, in_ch, out_ch=None, with_conv=True):
    """layerspp.Upsample / Downsample: Conv_0 (plain 3x3) or Conv2d_0 (FIR), or nothing."""
    if not with_conv:
        return ("resample", {})
    prefix = "Conv2d_0." if m["fir"] else "Conv_0."
    return ("resample", _conv(in_ch, out_ch or in_ch, prefix=prefix))


def reference_modules(config) -> list[tuple[str, dict[str, tuple]]]:
    """score_sde's all_modules: (kind, {local key: shape}) per index, in its order."""
    m, C = config["model"], config["data"]["num_channels"]
    nf, n_levels = m["nf"], len(m["ch_mult"])
    res = [config["data"]["image_size"] // 2**i for i in range(n_levels)]
    mods = []
    if m["embedding_type"] == "fourier":
        mods.append(("plain", {"W": (nf,)}))
    if m["conditional"]:
        embed = 2 * nf if m["embedding_type"] == "fourier" else nf
        mods += [("plain", _dense(embed, 4 * nf)), ("plain", _dense(4 * nf, 4 * nf))]
    mods.append(("plain", _conv(C, nf)))
    hs_c, in_ch, pyr_ch = [nf], nf, C
    for i in range(n_levels):
        for _ in range(m["num_res_blocks"]):
            mods.append(_resblock(m, in_ch, nf * m["ch_mult"][i]))
            in_ch = nf * m["ch_mult"][i]
            if res[i] in m["attn_resolutions"]:
                mods.append(_attn(in_ch))
            hs_c.append(in_ch)
        if i == n_levels - 1:
            continue
        mods.append(_resblock(m, in_ch, resample=True) if m["resblock_type"] == "biggan"
                    else _resampler(m, in_ch, with_conv=m["resamp_with_conv"]))
        if m["progressive_input"] == "input_skip":  # its pyramid resampler is not a module
            mods.append(("combine", _conv(pyr_ch, in_ch, 1, prefix="Conv_0.")))
            in_ch = 2 * in_ch if m["progressive_combine"] == "cat" else in_ch
        elif m["progressive_input"] == "residual":
            mods.append(_resampler(m, pyr_ch, in_ch))
            pyr_ch = in_ch
        hs_c.append(in_ch)
    in_ch = hs_c[-1]
    mods += [_resblock(m, in_ch), _attn(in_ch), _resblock(m, in_ch)]
    pyr_ch = 0
    for i in reversed(range(n_levels)):
        for _ in range(m["num_res_blocks"] + 1):
            mods.append(_resblock(m, in_ch + hs_c.pop(), nf * m["ch_mult"][i]))
            in_ch = nf * m["ch_mult"][i]
        if res[i] in m["attn_resolutions"]:
            mods.append(_attn(in_ch))
        top = i == n_levels - 1
        if m["progressive"] == "output_skip":  # its pyramid upsampler is not a module
            mods += [("plain", _norm(in_ch)), ("plain", _conv(in_ch, C))]
        elif m["progressive"] == "residual":
            mods += ([("plain", _norm(in_ch)), ("plain", _conv(in_ch, in_ch))] if top
                     else [_resampler(m, pyr_ch, in_ch)])
            pyr_ch = in_ch
        if i != 0:
            mods.append(_resblock(m, in_ch, resample=True) if m["resblock_type"] == "biggan"
                        else _resampler(m, in_ch, with_conv=m["resamp_with_conv"]))
    assert not hs_c
    if m["progressive"] != "output_skip":
        mods += [("plain", _norm(in_ch)), ("plain", _conv(in_ch, C))]
    return mods


def reference_state_dict(config, generator, scale=1.0) -> dict[str, torch.Tensor]:
    """A random state dict laid out as score_sde saves it (DataParallel prefix, sigmas)."""
    sd = {"module.sigmas": torch.rand(10, generator=generator)}
    for index, (_, keys) in enumerate(reference_modules(config)):
        for local, shape in keys.items():
            sd[f"module.all_modules.{index}.{local}"] = scale * torch.randn(shape,
                                                                            generator=generator)
    return sd


# --- where each score_sde tensor must land in ours -------------------------------------------
_RESBLOCK = {"GroupNorm_0": "norm0", "Conv_0": "conv0", "Dense_0": "dense",
             "GroupNorm_1": "norm1", "Conv_1": "conv1", "Conv_2": "skip"}


def expected_tensors(kind, keys, ref, has_dense=True):
    """{our local key: tensor} that score_sde tensors `ref` (by local key) must become."""
    if kind == "resblock":
        out = {}
        for local in keys:
            layer, param = local.split(".")
            if layer == "NIN_0":  # NIN: h W + b with W (in, out) -> conv weight (out, in, 1, 1)
                out[f"skip.{'weight' if param == 'W' else 'bias'}"] = (
                    ref[local].t()[:, :, None, None] if param == "W" else ref[local])
            elif layer != "Dense_0" or has_dense:
                out[f"{_RESBLOCK[layer]}.{param}"] = ref[local]
        return out
    if kind == "attn":
        return {"norm.weight": ref["GroupNorm_0.weight"], "norm.bias": ref["GroupNorm_0.bias"],
                "qkv.weight": torch.cat([ref[f"NIN_{i}.W"].t() for i in range(3)])[..., None,
                                                                                     None],
                "qkv.bias": torch.cat([ref[f"NIN_{i}.b"] for i in range(3)]),
                "proj.weight": ref["NIN_3.W"].t()[:, :, None, None], "proj.bias": ref["NIN_3.b"]}
    if kind in ("resample", "combine"):
        return {f"conv.{local.split('.', 1)[1]}": v for local, v in ref.items()}
    return dict(ref)


def check_one_to_one(config, ref, converted, model):
    """Every reference tensor is on its key of ours, unchanged; nothing left on either side."""
    modules, names = reference_modules(config), list(model.blocks)
    assert len(modules) == len(names), "our blocks are not score_sde's all_modules one to one"
    covered = set()
    for index, ((kind, keys), name) in enumerate(zip(modules, names)):
        local_ref = {k: ref[f"module.all_modules.{index}.{k}"] for k in keys}
        has_dense = getattr(model.blocks[name], "dense", None) is not None
        for local, value in expected_tensors(kind, keys, local_ref, has_dense).items():
            key = f"blocks.{name}.{local}"
            assert torch.equal(converted[key], value), (index, key)
            covered.add(key)
    assert covered == set(converted) == set(model.state_dict())


LAYOUTS = list(itertools.product(PROGRESSIVE, PROGRESSIVE_INPUT, COMBINE))


@pytest.mark.parametrize("resblock_type,fir", [("biggan", True), ("ddpm", False)])
@pytest.mark.parametrize("progressive,progressive_input,combine", LAYOUTS)
def test_every_layout_converts_one_to_one_and_runs(progressive, progressive_input, combine,
                                                   resblock_type, fir):
    config = _config(progressive, progressive_input, combine, resblock_type=resblock_type,
                     fir=fir)
    generator = torch.Generator().manual_seed(0)
    model = build_model(config)
    ref = reference_state_dict(config, generator)
    converted = convert_state_dict(ref, model=model)
    check_one_to_one(config, ref, converted, model)
    model.load_state_dict(converted)  # strict: every tensor of ours is covered
    x = torch.rand(2, 3, 16, 16, generator=generator)
    sigma = torch.tensor([0.5, 20.0])
    with torch.no_grad():
        out = model.eval()(x, sigma)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("variant", [
    dict(resblock_type="ddpm", fir=True), dict(resblock_type="biggan", fir=False),
    dict(resblock_type="ddpm", fir=False, resamp_with_conv=False),
    dict(conditional=False), dict(embedding_type="positional")])
@pytest.mark.parametrize("layout", [("output_skip", "input_skip", "cat"),
                                    ("residual", "residual", "sum")])
def test_other_options_convert_one_to_one(layout, variant):
    config = _config(*layout, **variant)
    ref = reference_state_dict(config, torch.Generator().manual_seed(1))
    model = build_model(config)
    check_one_to_one(config, ref, convert_state_dict(ref, model=model), model)


@pytest.mark.parametrize("layout", [("output_skip", "input_skip", "sum"),
                                    ("residual", "input_skip", "cat")])
def test_ema_shadow_params_land_on_their_keys(layout):
    """score_sde's EMA is a list in `model.parameters()` order (registration order, the frozen
    Fourier W left out): tensor k goes where raw parameter k goes."""
    config = _config(*layout)
    generator = torch.Generator().manual_seed(2)
    ref = reference_state_dict(config, generator)
    trainable = [k for k in ref if k != "module.sigmas" and not k.endswith(".0.W")]
    shadow = [torch.randn(ref[k].shape, generator=generator) for k in trainable]
    model = build_model(config)
    ema = convert_ema(shadow, ref, model=model)
    check_one_to_one(config, {**ref, **dict(zip(trainable, shadow))}, ema, model)


# --- score_sde's forward, written from its NCSNpp.forward, on its own state dict -------------
# Non-FIR layouts only (nearest / 2x2-mean resampling; the FIR layouts are pinned by the
# ve_cifar10 and ve_church fixtures): it checks our wiring of every progressive / input /
# combine option, the 1/sqrt(2) rescalings and the concatenation orders.
def _gn(h, w):
    return F.group_norm(h, min(h.shape[1] // 4, 32), w["weight"], w["bias"], eps=1e-6)


def _nin(h, w, b):  # score_sde's NIN: contract the channel axis with W (in, out)
    return torch.einsum("bchw,co->bohw", h, w) + b[None, :, None, None]


def _ref_resample(h, m, up):
    return F.interpolate(h, scale_factor=2.0, mode="nearest") if up else F.avg_pool2d(h, 2, 2)


def _ref_resblock(p, x, temb, m, up=False, down=False):
    act = F.silu
    sub = {k.split(".")[0]: {} for k in p}
    for k, v in p.items():
        sub[k.split(".")[0]][k.split(".")[1]] = v
    h = act(_gn(x, sub["GroupNorm_0"]))
    if up or down:
        h, x = _ref_resample(h, m, up), _ref_resample(x, m, up)
    h = F.conv2d(h, sub["Conv_0"]["weight"], sub["Conv_0"]["bias"], padding=1)
    if temb is not None:
        h = h + (act(temb) @ sub["Dense_0"]["weight"].t() + sub["Dense_0"]["bias"])[:, :, None,
                                                                                   None]
    h = F.conv2d(act(_gn(h, sub["GroupNorm_1"])), sub["Conv_1"]["weight"], sub["Conv_1"]["bias"],
                 padding=1)
    if "Conv_2" in sub:
        x = F.conv2d(x, sub["Conv_2"]["weight"], sub["Conv_2"]["bias"])
    elif "NIN_0" in sub:
        x = _nin(x, sub["NIN_0"]["W"], sub["NIN_0"]["b"])
    return (x + h) / math.sqrt(2.0)


def _ref_attn(p, x):
    B, C, H, W = x.shape
    h = _gn(x, {"weight": p["GroupNorm_0.weight"], "bias": p["GroupNorm_0.bias"]})
    q, k, v = (_nin(h, p[f"NIN_{i}.W"], p[f"NIN_{i}.b"]) for i in range(3))
    w = torch.einsum("bchw,bcij->bhwij", q, k) * C**-0.5
    w = torch.softmax(w.reshape(B, H, W, H * W), dim=-1).reshape(B, H, W, H, W)
    h = _nin(torch.einsum("bhwij,bcij->bchw", w, v), p["NIN_3.W"], p["NIN_3.b"])
    return (x + h) / math.sqrt(2.0)


def _ref_resampler(p, x, up, with_conv):
    """layerspp.Upsample / Downsample without FIR."""
    if up:
        h = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.conv2d(h, p["Conv_0.weight"], p["Conv_0.bias"], padding=1) if with_conv else h
    if with_conv:  # 'SAME' for stride 2: one pixel of zeros right and bottom
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), p["Conv_0.weight"], p["Conv_0.bias"], stride=2)
    return F.avg_pool2d(x, 2, 2)


def reference_forward(config, sd, x, sigma):
    """score_sde's NCSNpp.forward (Fourier embedding, skip_rescale, scale_by_sigma)."""
    m, n_levels = config["model"], len(config["model"]["ch_mult"])
    mods = [{k.split(".", 3)[3]: v for k, v in sd.items() if k.split(".")[2:3] == [str(i)]}
            for i in range(len(reference_modules(config)))]
    it = iter(mods)
    biggan, conv_resample = m["resblock_type"] == "biggan", m["resamp_with_conv"]
    proj = torch.log(sigma)[:, None] * next(it)["W"][None, :] * 2 * math.pi
    temb = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
    p = next(it)
    temb = temb @ p["weight"].t() + p["bias"]
    p = next(it)
    temb = F.silu(temb) @ p["weight"].t() + p["bias"]
    x = 2 * x - 1.0
    pyramid = x
    p = next(it)
    hs = [F.conv2d(x, p["weight"], p["bias"], padding=1)]
    for i in range(n_levels):
        for _ in range(m["num_res_blocks"]):
            h = _ref_resblock(next(it), hs[-1], temb, m)
            if h.shape[-1] in m["attn_resolutions"]:
                h = _ref_attn(next(it), h)
            hs.append(h)
        if i == n_levels - 1:
            continue
        h = (_ref_resblock(next(it), hs[-1], temb, m, down=True) if biggan
             else _ref_resampler(next(it), hs[-1], False, conv_resample))
        if m["progressive_input"] == "input_skip":
            pyramid = F.avg_pool2d(pyramid, 2, 2)  # its Downsample(with_conv=False)
            p = next(it)
            h_pyr = F.conv2d(pyramid, p["Conv_0.weight"], p["Conv_0.bias"])
            h = torch.cat([h_pyr, h], 1) if m["progressive_combine"] == "cat" else h_pyr + h
        elif m["progressive_input"] == "residual":
            pyramid = (_ref_resampler(next(it), pyramid, False, True) + h) / math.sqrt(2.0)
            h = pyramid
        hs.append(h)
    h = _ref_resblock(next(it), hs[-1], temb, m)
    h = _ref_attn(next(it), h)
    h = _ref_resblock(next(it), h, temb, m)
    pyramid = None
    for i in reversed(range(n_levels)):
        for _ in range(m["num_res_blocks"] + 1):
            h = _ref_resblock(next(it), torch.cat([h, hs.pop()], dim=1), temb, m)
        if h.shape[-1] in m["attn_resolutions"]:
            h = _ref_attn(next(it), h)
        top = i == n_levels - 1
        if m["progressive"] != "none" and (top or m["progressive"] == "output_skip"):
            norm, conv = next(it), next(it)
            out = F.conv2d(F.silu(_gn(h, norm)), conv["weight"], conv["bias"], padding=1)
            pyramid = out if top else F.interpolate(pyramid, scale_factor=2.0) + out
        elif m["progressive"] == "residual":
            pyramid = (_ref_resampler(next(it), pyramid, True, True) + h) / math.sqrt(2.0)
            h = pyramid
        if i != 0:
            h = (_ref_resblock(next(it), h, temb, m, up=True) if biggan
                 else _ref_resampler(next(it), h, True, conv_resample))
    if m["progressive"] == "output_skip":
        h = pyramid
    else:
        norm, conv = next(it), next(it)
        h = F.conv2d(F.silu(_gn(h, norm)), conv["weight"], conv["bias"], padding=1)
    assert next(it, None) is None
    return h / sigma[:, None, None, None]


@pytest.mark.parametrize("resblock_type,resamp_with_conv", [("biggan", True), ("ddpm", True),
                                                            ("ddpm", False)])
@pytest.mark.parametrize("progressive,progressive_input,combine", LAYOUTS)
def test_every_layout_computes_what_score_sde_computes(progressive, progressive_input, combine,
                                                       resblock_type, resamp_with_conv):
    config = _config(progressive, progressive_input, combine, resblock_type=resblock_type,
                     fir=False, resamp_with_conv=resamp_with_conv)
    generator = torch.Generator().manual_seed(3)
    ref = reference_state_dict(config, generator, scale=0.3)
    model = build_model(config).eval()
    model.load_state_dict(convert_state_dict(ref, model=model))
    x = torch.rand(2, 3, 16, 16, generator=generator)
    sigma = torch.tensor([0.05, 7.0])
    with torch.no_grad():
        ours, theirs = model(x, sigma), reference_forward(config, ref, x, sigma)
    rel = ((ours - theirs).flatten(1).norm(dim=1) / theirs.flatten(1).norm(dim=1)).max()
    assert rel < 1e-5, rel.item()

"""LPIPS (Zhang et al. 2018), VGG variant, from a local weights file; nothing is downloaded.

The weights file is a state dict in the layout of the `lpips` package's `LPIPS(net="vgg")`:
`net.slice{1..5}.{i}.weight/bias` (torchvision's VGG16 `features.{i}`) and
`lin{0..4}.model.1.weight` (the learned 1x1 channel weights). On a machine with internet:

    import lpips, torch; torch.save(lpips.LPIPS(net="vgg").state_dict(), "lpips_vgg.pth")

It is read with `sde.serialization.load_weights_only` (tensors only).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sde.serialization import load_weights_only

# VGG16 `features` indices of each slice; a number is a 3x3 conv to that many channels, "M" a
# 2x2 max-pool; every conv is followed by ReLU. Slices end at relu1_2, relu2_2, relu3_3, ...
_SLICES = [(0, [64, 64]), (4, ["M", 128, 128]), (9, ["M", 256, 256, 256]),
           (16, ["M", 512, 512, 512]), (23, ["M", 512, 512, 512])]
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS's ScalingLayer: [-1, 1] inputs to ImageNet statistics
SCALE = (0.458, 0.448, 0.450)


def _vgg_slice(start: int, spec, c_in: int) -> tuple[nn.Sequential, int]:
    """One VGG16 slice with torchvision's layer indices as module names."""
    layers, i = nn.Sequential(), start
    for item in spec:
        if item == "M":
            layers.add_module(str(i), nn.MaxPool2d(2, 2))
            i += 1
            continue
        layers.add_module(str(i), nn.Conv2d(c_in, item, 3, padding=1))
        layers.add_module(str(i + 1), nn.ReLU())
        c_in, i = item, i + 2
    return layers, c_in


class _Lin(nn.Module):
    """The learned non-negative channel weights of one layer (lpips' NetLinLayer)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(channels, 1, 1, bias=False))


class _VGG(nn.Module):
    def __init__(self):
        super().__init__()
        c_in = 3
        for k, (start, spec) in enumerate(_SLICES, 1):
            layers, c_in = _vgg_slice(start, spec, c_in)
            self.add_module(f"slice{k}", layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for k in range(1, len(_SLICES) + 1):
            x = getattr(self, f"slice{k}")(x)
            features.append(x)
        return features


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Features divided by their norm over channels (lpips' normalize_tensor)."""
    return f / (f.pow(2).sum(1, keepdim=True).add(eps).sqrt() + eps)


class LPIPS(nn.Module):
    """d(x, y) = sum_l mean_hw || w_l * (phi_l(x) / |phi_l(x)| - phi_l(y) / |phi_l(y)|) ||^2,
    (Eq. 1 of Zhang et al. 2018); images (B, 3, H, W) in [-1, 1], returns (B,)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).reshape(1, 3, 1, 1), persistent=False)
        self.net = _VGG()
        for k, c in enumerate(CHANNELS):
            self.add_module(f"lin{k}", _Lin(c))
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images (B, 3, H, W), got {tuple(x.shape)}")
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        d = [getattr(self, f"lin{k}").model((_unit(a) - _unit(b)).pow(2)).mean((1, 2, 3))
             for k, (a, b) in enumerate(zip(fx, fy))]
        return torch.stack(d).sum(0)


def load_lpips(path) -> LPIPS:
    """LPIPS with the weights of a local file (see the module docstring for its layout)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS weights not found at {path}. They cannot be downloaded here: save "
            "lpips.LPIPS(net='vgg').state_dict() with torch.save on a machine that has them, "
            "or leave the LPIPS path unset to train with L1 + adversarial loss only")
    state = load_weights_only(path, what="LPIPS weights")
    state = {k: v for k, v in state.items() if not k.startswith("scaling_layer.")}
    model = LPIPS()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} is not an LPIPS(net='vgg') state dict: {len(missing)} keys "
                         f"missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:2]})")
    return model.requires_grad_(False).eval()

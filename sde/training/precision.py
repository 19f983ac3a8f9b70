"""`trainer.precision`: fp32, bf16 autocast, or `auto`, resolved against what the device can do.

bf16 autocast only pays where the hardware multiplies bf16 fast. On this project's AMX machine,
with oneDNN capped (`ONEDNN_MAX_CPU_ISA`) at the instruction sets of older CPUs, a 1024^2 bf16
matrix product runs at 0.9 GFLOP/s capped to AVX2, 38 capped to AVX-512 without BF16 and 108
capped to AVX512_BF16, against ~160 in fp32 and ~1100-1400 in bf16 with AMX (1 thread); DDPM++'s
forward+backward runs 0.1x, 0.4x, 0.7x and 1.1-1.4x as fast in bf16 as in fp32 there
(`benchmarks/bench_models.py --quick --isa-sweep --threads 1 --clock process`).

Detection, per device type:
- CUDA: `torch.cuda.is_bf16_supported(including_emulation=False)` (compute capability >= 8,
  or ROCm). The default `including_emulation=True` also says yes on pre-Ampere GPUs, where bf16
  is emulated; that is the trap this module exists for.
- CPU: the bf16 instructions as cpuinfo reports them (`torch.cpu.get_capabilities()`; on Linux,
  the `/proc/cpuinfo` flags when that is missing), and oneDNN present
  (`torch.backends.mkldnn.is_available()`). Neither `torch.backends.cpu.get_cpu_capability()`
  ("AVX512" on a CPU with or without bf16 units: it names the vector kernels torch dispatches,
  not the bf16 units) nor `torch.ops.mkldnn._is_mkldnn_bf16_supported()` (true on any AVX-512
  CPU, where oneDNN emulates bf16 at a quarter of fp32's speed) can tell them apart.
- Any other device (mps, xpu, ...): not detected; `auto` is fp32 and `bf16` is taken as asked.

A CPU's bf16 is one of three kinds (`cpu_bf16_kind`):
- "amx": AMX-BF16 tiles (Intel Sapphire Rapids and later) -- bf16 is faster; `auto` picks it;
- "native": bf16 dot products (AVX512_BF16: Cooper Lake, AMD Zen 4/5; Arm's BF16 extension:
  Graviton 3/4, Neoverse V1/V2/N2, Apple M2+) -- no faster than fp32 (0.7-1.0x measured under
  the AVX512_BF16 cap; Arm not measured); `auto` keeps fp32, `bf16` is honoured;
- "emulated": none of these (AVX2 only: Intel desktop and laptop CPUs, Haswell to Comet Lake and
  Alder Lake on, AMD Zen 1-3; AVX-512 without BF16: Skylake-SP, Cascade Lake, Ice Lake; older Arm) --
  `bf16` falls back to fp32 with one warning, unless forced with `bf16_force`.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger("sde.train")

PRECISIONS = ("auto", "fp32", "bf16", "bf16_force")
CPU_BF16_KINDS = ("amx", "native", "emulated")


def _cpu_flags() -> set[str]:
    """The CPU's feature names, lower case: cpuinfo's through torch, else /proc/cpuinfo's."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return {name.lower() for name, on in get().items() if on is True}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return set(value.lower().split())
    return set()


def cpu_bf16_kind() -> str:
    """How this CPU runs bf16 matrix products: "amx", "native" or "emulated" (module docstring)."""
    if not torch.backends.mkldnn.is_available():
        return "emulated"  # without oneDNN, bf16 GEMMs take a scalar fallback on every CPU
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags or "bf16" in flags or "sve_bf16" in flags:
        return "native"
    return "emulated"


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether the GPU `device` has bf16 units (Ampere and later, or ROCm)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def describe_cpu() -> str:
    """One line naming the CPU, torch's kernel level and the bf16 kind (for logs and benchmarks)."""
    bf16 = sorted(f for f in _cpu_flags() if "bf16" in f)
    return (f"{platform.machine()} CPU, torch kernels {torch.backends.cpu.get_cpu_capability()}, "
            f"bf16 flags {bf16 or 'none'}, oneDNN {torch.backends.mkldnn.is_available()}, "
            f"bf16 kind {cpu_bf16_kind()!r}")


def _fallback_warning(where: str) -> str:
    return (f"trainer.precision=bf16 requested, but {where} has no bf16 units (bf16 would be "
            "emulated, many times slower than fp32): training in fp32. Use "
            "trainer.precision=bf16_force to train in bf16 anyway, or trainer.precision=auto")


def resolve_precision(requested: str, device) -> str:
    """`trainer.precision` ("auto" | "fp32" | "bf16" | "bf16_force") -> "fp32" or "bf16" for
    `device` (rules in the module docstring); logs one warning when bf16 falls back to fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{requested!r}")
    if requested in ("fp32", "bf16_force"):
        return "bf16" if requested == "bf16_force" else "fp32"
    device = torch.device(device)
    if device.type == "cuda":
        fast = native = cuda_has_bf16(device)
        where = f"GPU {device}"
    elif device.type == "cpu":
        kind = cpu_bf16_kind()
        fast, native = kind == "amx", kind != "emulated"
        where = "this CPU"
    else:
        return "bf16" if requested == "bf16" else "fp32"
    if requested == "auto":
        return "bf16" if fast else "fp32"
    if not native:
        log.warning(_fallback_warning(where))
        return "fp32"
    return "bf16"


__all__ = ["PRECISIONS", "CPU_BF16_KINDS", "resolve_precision", "cpu_bf16_kind", "cuda_has_bf16",
           "describe_cpu"]

"""`trainer.precision`: auto picks bf16 only where it is fast; bf16 without bf16 units falls back
to fp32 with one warning; the detection reads the CPU's bf16 flags, not torch's kernel level."""

import logging

import pytest
import torch

from sde.training import precision as prec
from sde.training.precision import cpu_bf16_kind, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has exactly the given feature flags (oneDNN present)."""

    def set_flags(*flags, onednn=True):
        monkeypatch.setattr(prec, "_cpu_flags", lambda: set(flags))
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)

    return set_flags


# (flags, kind): Sapphire Rapids, Cooper Lake / Zen 4, Graviton 3, Skylake-X, Haswell, Graviton 2
CPUS = [(("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"), "amx"),
        (("avx2", "avx512f", "avx512_bf16"), "native"),
        (("asimd", "sve", "bf16", "i8mm"), "native"),
        (("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"), "emulated"),
        (("avx", "avx2", "fma"), "emulated"),
        (("asimd", "asimddp"), "emulated")]


@pytest.mark.parametrize("flags,kind", CPUS)
def test_cpu_kind_from_the_bf16_flags(cpu_with, flags, kind):
    cpu_with(*flags)
    assert cpu_bf16_kind() == kind


def test_without_onednn_bf16_is_emulated_even_with_amx(cpu_with):
    cpu_with("avx512_bf16", "amx_bf16", onednn=False)
    assert cpu_bf16_kind() == "emulated"


@pytest.mark.parametrize("flags,auto,bf16", [
    (CPUS[0][0], "bf16", "bf16"), (CPUS[1][0], "fp32", "bf16"), (CPUS[4][0], "fp32", "fp32")])
def test_auto_and_bf16_on_each_kind_of_cpu(cpu_with, caplog, flags, auto, bf16):
    cpu_with(*flags)
    with caplog.at_level(logging.WARNING, logger="sde.train"):
        assert resolve_precision("auto", CPU) == auto
        assert not caplog.records  # auto never warns
        assert resolve_precision("bf16", "cpu") == bf16
        assert resolve_precision("fp32", CPU) == "fp32"
        assert resolve_precision("bf16_force", CPU) == "bf16"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == (bf16 == "fp32")  # exactly one line, only for the fallback
    for message in warnings:
        assert "no bf16 units" in message and "trainer.precision=bf16_force" in message
        assert "\n" not in message


def test_the_real_flags_are_read(monkeypatch):
    """The flag set is cpuinfo's (torch.cpu.get_capabilities) when torch has it."""
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {"amx_bf16": True, "avx512_bf16": False, "sve_max_length": 256,
                                 "architecture": "x86_64"}, raising=False)
    assert prec._cpu_flags() == {"amx_bf16"}


def test_proc_cpuinfo_is_the_fallback(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 AVX512_BF16\n\nprocessor\t: 1\n")
    real_path = prec.Path
    monkeypatch.setattr(prec, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
    assert prec._cpu_flags() == {"fpu", "avx2", "avx512_bf16"}


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cuda_uses_the_no_emulation_check(monkeypatch, caplog, has_bf16):
    """Pre-Ampere GPUs emulate bf16: `is_bf16_supported()` says yes there by default."""
    seen = {}

    def is_bf16_supported(including_emulation=True):
        seen["including_emulation"] = including_emulation
        return has_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: _Null())
    cuda = torch.device("cuda", 0)
    with caplog.at_level(logging.WARNING, logger="sde.train"):
        assert resolve_precision("auto", cuda) == ("bf16" if has_bf16 else "fp32")
        assert resolve_precision("bf16", cuda) == ("bf16" if has_bf16 else "fp32")
    assert seen == {"including_emulation": False}
    assert len(caplog.records) == (not has_bf16)


def test_other_devices_are_taken_as_asked():
    assert resolve_precision("bf16", "meta") == "bf16"
    assert resolve_precision("auto", "meta") == "fp32"


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", "bfloat16"])
def test_unknown_value_names_the_key(bad):
    with pytest.raises(ValueError, match=r"trainer\.precision must be one of auto, fp32, bf16"):
        resolve_precision(bad, CPU)


def test_this_machine_is_described():
    line = prec.describe_cpu()
    assert "bf16 kind" in line and cpu_bf16_kind() in line


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.gpu
def test_real_gpu_auto_follows_the_compute_capability():
    device = torch.device("cuda", 0)
    major, _ = torch.cuda.get_device_capability(device)
    expected = "bf16" if major >= 8 or torch.version.hip else "fp32"
    assert resolve_precision("auto", device) == expected
    assert resolve_precision("bf16", device) == expected

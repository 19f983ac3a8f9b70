"""torch.compile without graph breaks (slow) and CUDA behaviour (gpu)."""

import pytest
import torch

from sde.models import DDPM, MLP, NCSNpp


def _models():
    small = dict(image_size=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    return {
        "ddpmpp": NCSNpp(nf=16, **small),
        "ncsnpp": NCSNpp(nf=16, centered=False, fir=True, embedding_type="fourier",
                         progressive_input="residual", scale_by_sigma=True, **small),
        "output_skip": NCSNpp(nf=16, resblock_type="ddpm", progressive="output_skip",
                              progressive_input="input_skip", progressive_combine="cat", **small),
        "ddpm": DDPM(nf=32, **small),
        "mlp": MLP(dim=2, hidden=32),
    }


def _inputs(name, device="cpu"):
    x = torch.randn(2, 2) if name == "mlp" else torch.randn(2, 3, 16, 16)
    return x.to(device), (torch.rand(2) + 0.1).to(device)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_models()))
def test_no_graph_breaks(name):
    model = _models()[name].train()
    explanation = torch._dynamo.explain(model)(*_inputs(name))
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ncsnpp", "ddpm"])
def test_compiled_forward_and_backward_match_eager(name):
    torch._dynamo.reset()
    model = _models()[name].eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, c = _inputs(name)
    x.requires_grad_(True)
    (g_eager,) = torch.autograd.grad(model(x, c).square().sum(), x)
    (g_comp,) = torch.autograd.grad(compiled(x, c).square().sum(), x)
    torch.testing.assert_close(g_comp, g_eager, atol=1e-6, rtol=1e-5)


@pytest.fixture
def full_fp32():
    """Exact fp32 on CUDA for the layout / compiler comparisons: cuDNN convolutions default to
    TF32 (10-bit mantissa) on Ampere and later, and its ~1e-3 rounding differs between the
    kernels two memory layouts pick (measured on an H200: 1.2e-3 at atol 1e-4 otherwise)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp", "ddpm"])
def test_cuda_bf16_channels_last_and_inductor(name, full_fp32):
    model = _models()[name].cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, c = _inputs(name, "cuda")
    with torch.no_grad():
        ref = model(x, c)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, c)
        assert torch.isfinite(out).all()
        assert ((out.float() - ref).norm() / ref.norm()).item() < 5e-2
        cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(cl(x.to(memory_format=torch.channels_last), c), ref,
                                   atol=1e-4, rtol=1e-3)
        compiled = torch.compile(cl, fullgraph=True)
        torch.testing.assert_close(compiled(x, c), ref, atol=1e-4, rtol=1e-3)

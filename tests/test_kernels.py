"""The fused Triton kernel (:mod:`asid_arch.kernels`) computes what the plain SLA/SGA layers compute.

On the CPU the kernel runs through Triton's interpreter (the same kernel source, executed with
NumPy); on a GPU it is compiled, and also checked eagerly and inside ``torch.compile`` and
``ASIDUpsampler``. Without Triton (CPU-only torch builds) these tests are skipped and the plain
path is all there is.
"""
import copy
import importlib.util
import os
import sys

import pytest
import torch

from asid_arch import ASID, ASIDUpsampler
from asid_arch import kernels
from asid_arch.asid_arch import SpatialSelfAttention
from conftest import compile_with_backend

#: where the kernel runs: compiled on a GPU, else through Triton's interpreter (set by conftest.py)
DEVICE = 'cpu' if os.environ.get('TRITON_INTERPRET') == '1' else 'cuda'
pytestmark = pytest.mark.skipif(importlib.util.find_spec('triton') is None or
                                DEVICE == 'cuda' and not torch.cuda.is_available(),
                                reason='needs Triton (CUDA builds of torch ship it), and a GPU or its interpreter')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def layers(dim, grid, device='cpu', dtype=torch.float32, layout=torch.contiguous_format, seed=0):
    """A computing and a sharing layer with random (not initial) weights, a channel-slice input as
    the block hands it over (of an NCHW or a channels-last map), and the computing layer's
    attention map for the sharing one."""
    torch.manual_seed(seed)
    computing = SpatialSelfAttention(dim, 8, grid=grid, share=False).eval()
    sharing = SpatialSelfAttention(dim, 8, grid=grid, share=True).eval()
    for p in [*computing.parameters(), *sharing.parameters()]:
        p.data.normal_(0, 0.3)
    x = torch.randn(2, dim + 4, 16, 24).to(device, dtype, memory_format=layout)[:, 4:]
    with torch.no_grad():
        _, attn = computing.to(device, dtype)(x)
    return computing, sharing.to(device, dtype), x, attn


def fused_copy(module):
    fused = copy.deepcopy(module)
    assert kernels.use_fused_kernels(fused) > 0
    return fused


@pytest.fixture
def launches(monkeypatch):
    """The kernel's launches, as the ``share`` flag of each: a fused path that quietly ran the
    plain layers would pass every comparison."""
    from asid_arch import triton_kernels
    seen, launch = [], triton_kernels._launch

    def counted(*args, share, **kwargs):
        seen.append(share)
        return launch(*args, share=share, **kwargs)

    monkeypatch.setattr(triton_kernels, '_launch', counted)
    return seen


GRIDS = pytest.mark.parametrize('grid', [False, True], ids=['local windows', 'grid windows'])
WIDTHS = pytest.mark.parametrize('dim', [36, 24, 12])  # the three widths of ASID's distillation stages
LAYOUTS = pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last], ids=['NCHW', 'NHWC'])


ON_A_GPU_16_BITS = pytest.mark.skipif(DEVICE == 'cuda', reason='on a GPU the kernel serves 16 bits')
NO_BF16_DOT = pytest.mark.skipif(DEVICE == 'cpu', reason="the interpreter's bf16 dot is wrong")


@GRIDS
@WIDTHS
@pytest.mark.parametrize('dtype, tol', [pytest.param(torch.float32, 1e-4, marks=ON_A_GPU_16_BITS),
                                        (torch.float16, 4e-3),
                                        pytest.param(torch.bfloat16, 3e-2, marks=NO_BF16_DOT)])
@LAYOUTS
def test_the_fused_sharing_layer_computes_the_plain_layer(dim, grid, dtype, tol, layout, launches):
    _, layer, x, attn = layers(dim, grid, DEVICE, dtype, layout)
    with torch.no_grad():
        ref, _ = layer(x, attn)
        out, attn_out = fused_copy(layer)(x, attn)
    assert launches == [True] and attn_out is attn and out.dtype == dtype and out.stride() == ref.stride()
    assert (out.float() - ref.float()).abs().max() <= tol  # 16 bits: within one rounding of values ~5


@GRIDS
@WIDTHS
@pytest.mark.parametrize('dtype', [pytest.param(torch.float32, marks=ON_A_GPU_16_BITS), torch.float16,
                                   pytest.param(torch.bfloat16, marks=NO_BF16_DOT)])
@LAYOUTS
def test_the_fused_computing_layer_is_as_close_to_fp32_as_the_plain_layer_and_so_is_its_map(dim, grid, dtype, layout,
                                                                                          launches):
    # The logits q k^T are rounded to the dtype before the softmax, as the plain layer rounds them: in
    # 16 bits the two sides' different summation orders can round a logit ~10 one step apart (1/16 in
    # bf16), which moves its probability by 6%. So each side is held to the fp32 layer, and the kernel
    # may be no further from it than the plain layer in the same dtype is.
    layer, _, x, _ = layers(dim, grid, DEVICE, dtype, layout)
    exact = copy.deepcopy(layer).float()
    with torch.no_grad():
        ref, ref_attn = exact(x.float())
        plain, plain_attn = layer(x)
        out, attn = fused_copy(layer)(x)
    assert launches == [False] and out.dtype == attn.dtype == dtype and attn.shape == ref_attn.shape
    for fused_side, plain_side, exact_side in ((out, plain, ref), (attn, plain_attn, ref_attn)):
        fused_error = (fused_side.float() - exact_side).abs().max().item()
        plain_error = (plain_side.float() - exact_side).abs().max().item()
        assert fused_error <= 1.5 * plain_error + 1e-4


def test_a_fused_network_keeps_its_keys_and_its_function_also_traced_by_dynamo(monkeypatch, launches):
    torch.manual_seed(0)
    dtype, tol = (torch.float32, 1e-5) if DEVICE == 'cpu' else (torch.float16, 4e-3)
    net = ASID(upscale=2, num_groups=2, num_feat=16).eval().to(DEVICE, dtype)
    fused = fused_copy(net)
    # SLA1-3 and SGA1-3 of the computing group and of the sharing group
    assert sum(isinstance(m, kernels.FusedSpatialAttention) for m in fused.modules()) == 12
    assert fused.state_dict().keys() == net.state_dict().keys()
    x = torch.rand(1, 3, 21, 13, device=DEVICE, dtype=dtype)  # padded inside the network
    with torch.no_grad():
        ref = net(x)
        assert (fused(x) - ref).abs().max() <= tol
        assert launches == [False] * 6 + [True] * 6  # the first group computes the maps, the second shares them
        compile_with_backend(monkeypatch, 'aot_eager')  # fullgraph=True: the kernel, an opaque op, breaks no graph
        try:
            out = torch.compile(fused, dynamic=False)(x)
        finally:
            torch._dynamo.reset()
    assert (out - ref).abs().max() <= tol


def test_with_gradients_the_fused_network_runs_the_plain_path(launches):
    torch.manual_seed(0)
    net = ASID(upscale=2, num_groups=2, num_feat=16).to(DEVICE)
    fused = fused_copy(net).train()
    x = torch.rand(1, 3, 16, 16, device=DEVICE, requires_grad=True)
    out = fused(x)
    out.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in fused.parameters())
    assert torch.equal(out, net(x)) and launches == []  # the plain path, bit for bit


def test_kernels_are_chosen_on_a_gpu_only_and_can_be_turned_off():
    net = ASID(upscale=2, num_groups=2, num_feat=16)
    assert not kernels.available('cpu')
    with pytest.warns(UserWarning, match='emulated'):  # fp16 on the CPU: the kernel's precision, but no GPU
        assert ASIDUpsampler(net, device='cpu', precision='fp16', compile=True).fused_layers == 0
    with pytest.raises(ValueError, match='kernels'):
        ASIDUpsampler(net, device='cpu', kernels='yes')


def test_a_kernel_that_cannot_be_loaded_is_a_warning_and_the_plain_layers_run(monkeypatch):
    net = ASID(upscale=2, num_groups=2, num_feat=16)
    monkeypatch.setitem(sys.modules, 'asid_arch.triton_kernels', None)  # its import fails, as a broken Triton's
    monkeypatch.delattr(sys.modules['asid_arch'], 'triton_kernels', raising=False)
    with pytest.warns(UserWarning, match='could not be loaded'):
        assert kernels.use_fused_kernels(net) == 0
    assert not any(isinstance(m, kernels.FusedSpatialAttention) for m in net.modules())


@needs_cuda
def test_on_a_gpu_the_upsampler_with_kernels_computes_what_it_computes_without():
    torch.manual_seed(0)
    net = ASID(upscale=4, num_groups=3).cuda().eval()
    x = torch.rand(2, 3, 48, 40, device='cuda')
    with torch.no_grad():
        ref = net(x)
    fused = ASIDUpsampler(net, device='cuda', precision='fp16', tile=0, compile=True)
    plain = ASIDUpsampler(net, device='cuda', precision='fp16', tile=0, compile=True, kernels=False)
    assert fused.fused_layers == 18 and plain.fused_layers == 0
    a, b = fused.run_network(x), plain.run_network(x)
    assert all(g is not None for g in fused._network.graphs.values()) and len(fused._network.graphs) == 1
    assert (a - b).abs().max() <= 4e-3
    assert (a - ref).abs().max() <= 4e-3

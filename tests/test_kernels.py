"""The fused Triton kernels (:mod:`asid_arch.kernels`) compute what the plain SLA/SGA layers compute, forward and backward.

On the CPU the kernels run through Triton's interpreter (the same kernel source, executed with
NumPy); on a GPU they are compiled, and also checked eagerly and inside ``torch.compile``,
``ASIDUpsampler`` and the compiled training step. Without Triton (CPU-only torch builds) these tests are skipped and the plain
path is all there is.
"""
import copy
import importlib.util
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from asid_arch import ASID, ASIDUpsampler
from asid_arch import kernels
from asid_arch.asid_arch import EnhancedSpatialAttention, SpatialSelfAttention
from conftest import compile_with_backend

#: where the kernel runs: compiled on a GPU, else through Triton's interpreter (set by conftest.py)
DEVICE = 'cpu' if os.environ.get('TRITON_INTERPRET') == '1' else 'cuda'
pytestmark = pytest.mark.skipif(importlib.util.find_spec('triton') is None or
                                DEVICE == 'cuda' and not torch.cuda.is_available(),
                                reason='needs Triton (CUDA builds of torch ship it), and a GPU or its interpreter')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def layers(dim, grid, device='cpu', dtype=torch.float32, layout=torch.contiguous_format, seed=0, window_size=8):
    """A computing and a sharing layer with random (not initial) weights, a channel-slice input as
    the block hands it over (of an NCHW or a channels-last map), and the computing layer's
    attention map for the sharing one."""
    torch.manual_seed(seed)
    computing = SpatialSelfAttention(dim, window_size, grid=grid, share=False).eval()
    sharing = SpatialSelfAttention(dim, window_size, grid=grid, share=True).eval()
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
    """The kernels' launches, as the ``share`` flag of each forward (``'backward'`` and the flag for
    a backward): a fused path that quietly ran the plain layers would pass every comparison."""
    from asid_arch import triton_kernels
    seen, launch, launch_backward = [], triton_kernels._launch, triton_kernels._launch_backward

    def counted(*args, share, **kwargs):
        seen.append(share)
        return launch(*args, share=share, **kwargs)

    def counted_backward(*args, share, **kwargs):
        seen.append(('backward', share))
        return launch_backward(*args, share=share, **kwargs)

    monkeypatch.setattr(triton_kernels, '_launch', counted)
    monkeypatch.setattr(triton_kernels, '_launch_backward', counted_backward)
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


def reversed_strides(t):
    """``t``'s values, its strides in the reverse order (a gradient arriving in no layout the kernel expects)."""
    return t.permute(*reversed(range(t.dim()))).contiguous().permute(*reversed(range(t.dim())))


def layer_gradients(layer, x, attn, dtype, fused, seed=1):
    """Output and every gradient of ``layer`` (a fused copy with ``fused``) for a random weighting
    of its output and its map (with reversed strides), the products in ``dtype`` under autocast
    (training's way; the weights and the input stay fp32). ``x`` is a channel slice of a map, as
    the block hands it over: the gradient is taken of the whole map, then sliced."""
    layer = fused_copy(layer) if fused else copy.deepcopy(layer)
    whole = x._base.detach().clone().requires_grad_(True)  # clone keeps NCHW or channels-last
    attn = None if attn is None else attn.detach().clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out, attn_out = layer(whole[:, whole.shape[1] - x.shape[1]:], attn)
    g = torch.Generator().manual_seed(seed)
    loss = (out.float() * reversed_strides(torch.randn(out.shape, generator=g).to(x.device))).sum()
    if attn is None:  # the computing layer's map, as the sharing layers' gradient reaches it
        weight = reversed_strides(torch.randn(attn_out.shape, generator=g).to(x.device))
        loss = loss + (attn_out.float() * weight).sum() / 8
    loss.backward()
    named = {'output': out, 'x': whole.grad[:, whole.shape[1] - x.shape[1]:],
             **{n: p.grad for n, p in layer.named_parameters()}}
    if attn is not None:
        named['shared map'] = attn.grad
    return named


def assert_gradients_as_close_to_fp32(exact, plain, fused, dtype):
    """In fp32 (the CPU interpreter) the kernel gives the plain layer's gradients; in 16 bits each side
    is held to fp32 as the forward is (the sides round in different orders), the kernel no further."""
    assert fused.keys() == exact.keys()
    for name in exact:
        scale = exact[name].abs().max().item()
        fused_error = (fused[name].float() - exact[name]).abs().max().item()
        plain_error = (plain[name].float() - exact[name]).abs().max().item()
        if dtype == torch.float32:
            assert fused_error <= 2e-6 * scale, name
        else:
            assert fused_error <= 1.5 * plain_error + 1e-3 * scale, name


@GRIDS
@pytest.mark.parametrize('share', [False, True], ids=['computing', 'sharing'])
@pytest.mark.parametrize('dim', [36, 20])  # 20: not a power of two, nor of ASID's widths
@pytest.mark.parametrize('dtype', [pytest.param(torch.float32, marks=ON_A_GPU_16_BITS), torch.float16,
                                   pytest.param(torch.bfloat16, marks=NO_BF16_DOT)])
@LAYOUTS
def test_the_fused_layers_gradients_are_as_close_to_fp32_as_the_plain_layers(share, grid, dim, dtype, layout,
                                                                            launches):
    # Every gradient: the input's, the shared map's, the norm's, both projections', the bias table's.
    computing, sharing, x, attn = layers(dim, grid, DEVICE, layout=layout)
    layer, attn = (sharing, attn) if share else (computing, None)
    exact = layer_gradients(layer, x, attn, torch.float32, fused=False)
    plain = layer_gradients(layer, x, attn, dtype, fused=False)
    fused = layer_gradients(layer, x, attn, dtype, fused=True)
    assert launches == [share, ('backward', share)]
    assert_gradients_as_close_to_fp32(exact, plain, fused, dtype)


@pytest.mark.parametrize('share', [False, True], ids=['computing', 'sharing'])
def test_the_fused_layers_gradients_hold_for_windows_of_4_px(share, launches):
    # 16 tokens a window: the smallest the kernel takes, and a bias table of 7 x 7 offsets
    computing, sharing, x, attn = layers(24, True, DEVICE, window_size=4)
    layer, attn = (sharing, attn) if share else (computing, None)
    dtype = torch.float32 if DEVICE == 'cpu' else torch.float16
    exact = layer_gradients(layer, x, attn, torch.float32, fused=False)
    assert_gradients_as_close_to_fp32(exact, layer_gradients(layer, x, attn, dtype, fused=False),
                                      layer_gradients(layer, x, attn, dtype, fused=True), dtype)
    assert launches == [share, ('backward', share)]


#: the dtype a whole network's gradients are checked in: fp32 on the CPU interpreter (exact), fp16
#: autocast on a GPU (in fp32 a GPU runs the plain layers). These tests check where the gradients go
#: (shared maps, compiled graphs), and fp16's 8x finer rounding keeps a lost gradient far above the
#: roundings of 24 layers (in bf16, on an H100, the kernels' reached 0.06-0.08 on three small
#: gradients, 0.003-0.007 the plain network's). bf16, training's dtype and the same kernel code, is
#: checked layer by layer above; no test checks a whole network's bf16 gradients (docs/speed.md has
#: the L1 curves of training with and without the kernels).
NETWORK_DTYPE = torch.float32 if DEVICE == 'cpu' else torch.float16


def network_gradients(module, x, dtype, compiled=False, one_image_at_a_time=False):
    """Every parameter's gradient of ``module(x).square().sum()``, the products in ``dtype`` under
    autocast (on ``x``'s device); ``one_image_at_a_time``: the images' gradients summed, the same
    function rounded in another order."""
    module.zero_grad()
    run = torch.compile(module, dynamic=False) if compiled else module
    # fp32 without TF32 (cuDNN's default for convolutions on a GPU rounds their inputs to 10 bits)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), \
            torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        for batch in x.split(1) if one_image_at_a_time else (x,):
            run(batch).square().sum().backward()
    return [p.grad.clone() for p in module.parameters()]


def esa_pooling_margin(net, x):
    """The smallest lead, in fp32, of a maximum over the runner-up in any window of ESA's 7x7 max-pool.

    The pool sends its gradient to one pixel a window; where two values are closer than fp16's
    step, a rounding can pick the other, and that changes ESA's gradients a lot: a difference of
    branch, not of the kernels (Inductor's compiled plain network did it on the CPU in fp16)."""
    net, maps = copy.deepcopy(net).cpu().float(), []  # on the CPU: fp32 as written, on any device
    for m in net.modules():
        if isinstance(m, EnhancedSpatialAttention):
            m.conv2.register_forward_hook(lambda module, args, out: maps.append(out))
    with torch.no_grad():
        net(x.cpu().float())
    margins = []
    for m in maps:
        windows = F.unfold(m, 7, stride=3).view(m.shape[0], m.shape[1], 49, -1)
        top = windows.topk(2, dim=2).values
        margins.append(float((top[:, :, 0] - top[:, :, 1]).min()))
    return min(margins)


def assert_network_gradients_as_close_to_fp32(exact, plain, fused, dtype):
    """A whole network's gradients: in fp32 (the CPU interpreter) the plain network's, to 1e-5 of the
    largest; in 16 bits, each parameter's gradient no further from fp32, in L2 relative to its own
    size, than twice the plain network's plus 0.05.

    Over a whole network the roundings of 24 layers compound, and the largest single difference
    (what the per-layer tests compare) is a poor statistic there. Measured on the CPU for this
    test's network (fp16 / bf16): the plain network fed one image at a time, 0.29 / 0.45 of this
    bound on every parameter; a sharing layer that detaches its map, over it on 9 / 6 parameters, one
    by 13x / 4.4x; Inductor's compiled plain network against the eager one, 1.2x / 0.71, in fp16 on
    ESA's strided convolution, where one max-pool maximum led by less than fp16's step
    (:func:`esa_pooling_margin`), and 0.15 in fp16 for an input without such a tie. The GPU tests
    use such an input, and hold a compiled network to the compiled plain one."""
    if dtype == torch.float32:
        scale = max(e.abs().max().item() for e in exact)
        assert max((f - e).abs().max().item() for f, e in zip(fused, exact)) <= 1e-5 * scale
        return
    worse = []
    for i, (f, p, e) in enumerate(zip(fused, plain, exact)):
        size = e.norm().item() or 1.0
        fused_error, plain_error = (f - e).norm().item() / size, (p - e).norm().item() / size
        if fused_error > 2 * plain_error + 0.05:
            worse.append(f'parameter {i} {tuple(e.shape)}: {fused_error:.3f} against {plain_error:.3f}')
    assert not worse, worse


def test_a_fused_network_trains_through_the_kernels_with_the_plain_gradients_also_compiled(monkeypatch, launches):
    torch.manual_seed(3)  # drawn on the CPU: the same weights and input on any device
    net = ASID(upscale=2, num_groups=2, num_feat=16).to(DEVICE)
    x = torch.rand(2, 3, 16, 16).to(DEVICE)
    assert esa_pooling_margin(net, x) > 1e-3  # a seed whose max-pools an fp16 rounding does not flip
    dtype = NETWORK_DTYPE
    exact, plain = network_gradients(net, x, torch.float32), network_gradients(net, x, dtype)
    fused = fused_copy(net).train()
    eager = network_gradients(fused, x, dtype)
    # the first group computes the maps and the second shares them; backward in the reverse order
    assert launches == [False] * 6 + [True] * 6 + [('backward', True)] * 6 + [('backward', False)] * 6
    launches.clear()
    compile_with_backend(monkeypatch, 'aot_eager' if DEVICE == 'cpu' else 'inductor')
    try:
        # (in fp32 the check reads the exact gradients only)
        plain_compiled = plain if dtype == torch.float32 else network_gradients(net, x, dtype, compiled=True)
        compiled = network_gradients(fused, x, dtype, compiled=True)
    finally:
        torch._dynamo.reset()
    assert sorted(launches, key=str) == sorted([False] * 6 + [True] * 6 + [('backward', True)] * 6
                                               + [('backward', False)] * 6, key=str)
    # each side against the plain network run the same way: Inductor rounds other layers its own way
    assert_network_gradients_as_close_to_fp32(exact, plain, eager, dtype)
    assert_network_gradients_as_close_to_fp32(exact, plain_compiled, compiled, dtype)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_the_whole_network_gradient_check_in_16_bits_catches_a_sharing_layer_that_detaches_its_map(
        monkeypatch, dtype):
    # the check the GPU tests hold the kernels to (in fp16), on the plain network under autocast on
    # the CPU: a shared map that passes no gradient back to the layer that computed it fails it
    torch.manual_seed(0)
    net = ASID(upscale=2, num_groups=2, num_feat=16)
    x = torch.rand(2, 3, 16, 16)
    exact, plain = network_gradients(net, x, torch.float32), network_gradients(net, x, dtype)
    # the same function rounded in another order (one image at a time, the gradients summed) passes
    reordered = network_gradients(net, x, dtype, one_image_at_a_time=True)
    assert_network_gradients_as_close_to_fp32(exact, plain, reordered, dtype)
    plain_forward = SpatialSelfAttention.forward
    monkeypatch.setattr(SpatialSelfAttention, 'forward',
                        lambda self, x, attn=None: plain_forward(self, x, None if attn is None else attn.detach()))
    detached = network_gradients(net, x, dtype)
    with pytest.raises(AssertionError, match='parameter'):
        assert_network_gradients_as_close_to_fp32(exact, plain, detached, dtype)


def test_a_map_no_layer_shares_sends_no_gradient_to_read(launches):
    # one group: the computing layers' maps go nowhere, and the backward runs without their gradient
    torch.manual_seed(3)
    net = ASID(upscale=2, num_groups=1, num_feat=16).to(DEVICE)
    x = torch.rand(2, 3, 16, 16).to(DEVICE)
    assert esa_pooling_margin(net, x) > 1e-3
    exact, plain = network_gradients(net, x, torch.float32), network_gradients(net, x, NETWORK_DTYPE)
    fused = network_gradients(fused_copy(net).train(), x, NETWORK_DTYPE)
    assert launches == [False] * 6 + [('backward', False)] * 6
    assert_network_gradients_as_close_to_fp32(exact, plain, fused, NETWORK_DTYPE)


@needs_cuda
def test_on_a_gpu_the_bf16_training_step_with_the_kernels_replays_as_one_cuda_graph(launches):
    # ASIDModel's compiled bf16 step: Inductor around the kernels' ops, then one CUDA graph a step
    from basicsr_ext.training.train_step import WARMUP_STEPS, TrainStep

    def losses(output, gt):
        l1 = (output - gt).abs().mean()
        return l1, {'l_pix': l1}

    def train(net, compile):
        step = TrainStep(net, losses, torch.optim.AdamW(net.parameters(), lr=1e-3), precision='bf16',
                         compile=compile)
        return step, [float(step(lq, gt)['l_pix']) for lq, gt in data]

    torch.manual_seed(0)
    net = ASID(upscale=2, num_groups=2, num_feat=16).cuda()
    data = [(torch.rand(4, 3, 16, 16, device='cuda'), torch.rand(4, 3, 32, 32, device='cuda')) for _ in range(8)]
    fused = fused_copy(net)
    torch._dynamo.reset()
    try:
        step, fused_losses = train(fused, compile=True)
    finally:
        torch._dynamo.reset()
    assert step.graph is not None and step.steps == 8
    # the warm-up steps and the capture ran the kernels, forward and backward; the replays run them unseen
    one_step = [False] * 6 + [True] * 6 + [('backward', True)] * 6 + [('backward', False)] * 6
    assert sorted(launches, key=str) == sorted(one_step * (WARMUP_STEPS + 1), key=str)
    _, plain_losses = train(net, compile=False)  # the eager bf16 step of the plain network, the same batches
    assert fused_losses == pytest.approx(plain_losses, rel=0.02)


def test_a_dtype_the_kernels_do_not_take_runs_the_plain_layer(launches):
    computing, _, x, _ = layers(12, False, DEVICE, dtype=torch.float64)
    with torch.no_grad():
        out, attn = fused_copy(computing)(x)
        assert torch.equal(out, computing(x)[0]) and launches == []


def test_on_the_cpu_the_upsampler_runs_no_kernel_and_takes_only_auto_true_or_false_for_kernels():
    net = ASID(upscale=2, num_groups=2, num_feat=16)
    assert not kernels.available('cpu')
    with pytest.warns(UserWarning, match='emulated'):  # fp16 on the CPU: the kernel's precision, but no GPU
        assert ASIDUpsampler(net, device='cpu', precision='fp16', compile=True).fused_layers == 0
    assert ASIDUpsampler(net, device='cpu', kernels=True).kernels == 'auto'
    assert ASIDUpsampler(net, device='cpu', kernels=False).kernels is False
    for value in ('yes', 0, None):
        with pytest.raises(ValueError, match=r"kernels must be 'auto' \(or True\) or False"):
            ASIDUpsampler(net, device='cpu', kernels=value)


def test_an_input_that_is_not_whole_windows_or_a_map_not_one_per_window_is_refused_naming_the_shapes():
    from asid_arch import triton_kernels
    with pytest.raises(ValueError, match=r'input \(1, 4, 9, 8\) is not whole windows of 4 px'):
        triton_kernels._check(torch.zeros(1, 4, 9, 8), None, 4)  # a computing layer's backward passes no map
    with pytest.raises(ValueError, match=r'the map \(3, 16, 16\) is not one \(16, 16\) map for each of the 4 windows'):
        triton_kernels._check(torch.zeros(1, 4, 8, 8), torch.zeros(3, 16, 16), 4)


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

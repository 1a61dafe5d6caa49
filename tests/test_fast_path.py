"""Inference fast paths (``ASIDUpsampler(compile=True)``, ``precision``, channels-last) compute the plain function.

The plain eager network is the definition; how it runs is chosen by the inference helper
(and, for training, by ASIDModel's step: ``tests/test_train_step.py``), never by the network,
which takes the architecture's arguments only.
"""
import copy
import inspect

import pytest
import torch

from asid_arch import ASID, ASID_D8, ASIDUpsampler  # first: patches BasicSR for this stack before it is imported
from conftest import compile_with_backend


def psnr(a, b):
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).square().mean()
    return float(10 * torch.log10(1 / mse))


@pytest.fixture(scope='module')
def golden_net(golden):
    net = ASID(upscale=golden['upscale'], num_groups=golden['num_groups'])
    net.load_state_dict(golden['state_dict'], strict=True)
    return net.eval()


def _compare_compiled_with_plain():
    # a small network with a sharing group, an odd-sized input (padding and cropping inside)
    torch.manual_seed(0)
    net = ASID(upscale=2, num_groups=2, num_feat=16)
    x = torch.rand(2, 3, 21, 13)
    up = ASIDUpsampler(net, device='cpu', compile=True)
    with torch.no_grad():
        plain, fast = net(x), up.run_network(x)
    assert fast.shape == plain.shape == (2, 3, 42, 26)
    assert (fast - plain).abs().max() <= 1e-4


def test_the_network_takes_the_architectures_arguments_only():
    for cls in (ASID, ASID_D8):
        assert list(inspect.signature(cls).parameters) == ['upscale', 'num_groups', 'num_feat', 'window_size',
                                                           'value_range']
    source = inspect.getsource(inspect.getmodule(ASID))
    for runtime in ('torch.compile(', 'torch.autocast(', 'torch.cuda', 'fast_path', 'self.precision'):
        assert runtime not in source, runtime


def test_compile_plumbing_traces_the_network_whole_and_keeps_its_function(monkeypatch):
    # The cheap check of the compile path: the same call of torch.compile that compile=True
    # makes, with Inductor replaced by the 'eager' backend, so that Dynamo traces the whole network
    # (every reshape, the shared attention, padding and cropping) without generating C++ kernels.
    calls = compile_with_backend(monkeypatch, 'eager')
    try:
        _compare_compiled_with_plain()
    finally:
        monkeypatch.undo()
        torch._dynamo.reset()
    assert calls == [{'dynamic': False}]  # Inductor's default mode (on a GPU our own CUDA graphs, below)


@pytest.mark.slow
def test_compiled_forward_equals_the_plain_path():
    # the full comparison through Inductor: ~1 min of C++ compilation on a 2-core CPU (pytest -m slow)
    torch._dynamo.reset()
    _compare_compiled_with_plain()


def test_the_cpu_default_runs_channels_last_and_computes_the_plain_function(golden, golden_net):
    up = ASIDUpsampler(golden_net, device='cpu')
    assert up.channels_last and up.net.input.weight.is_contiguous(memory_format=torch.channels_last)
    assert golden_net.input.weight.is_contiguous()  # the caller's network keeps its layout
    with torch.no_grad():
        assert (up.run_network(golden['input']) - golden_net(golden['input'])).abs().max() <= 1e-5
    assert up.compiled_memory_format == torch.channels_last
    plain = ASIDUpsampler(golden_net, device='cpu', channels_last=False)
    assert plain.memory_format == plain.compiled_memory_format == torch.contiguous_format


@pytest.mark.parametrize('amp', [True, False])
@pytest.mark.parametrize('precision, min_psnr', [('bf16', 40.0), ('fp16', 50.0)])
def test_reduced_precision_output_is_close_to_fp32_by_psnr(golden, golden_net, precision, min_psnr, amp):
    x = golden['input']
    with torch.no_grad():
        ref = golden_net(x)
    with pytest.warns(UserWarning, match='emulated'):
        up = ASIDUpsampler(golden_net, device='cpu', precision=precision, amp=amp, tile=0)
    out = up.run_network(x)
    assert out.dtype == torch.float32
    assert psnr(out, ref) >= min_psnr, psnr(out, ref)


def test_fast_paths_leave_the_callers_network_and_its_state_dict_alone(golden, golden_net):
    before = copy.deepcopy(golden_net.state_dict())
    with pytest.warns(UserWarning):
        ASIDUpsampler(golden_net, device='cpu', precision='fp16', compile=True)
    assert all(t.dtype == torch.float32 for t in golden_net.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in golden_net.state_dict().items())


# ---------------------------------------------------------------------------------------------
# on a GPU: the compiled network captured as one CUDA graph per input size (asid_arch.graphs)
# ---------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@needs_cuda
def test_on_a_gpu_each_input_size_is_captured_once_and_replays_the_plain_function():
    torch.manual_seed(0)
    net = ASID(upscale=4, num_groups=3).cuda().eval()  # a computing and two sharing groups
    up = ASIDUpsampler(net, device='cuda', precision='fp32', tile=0, compile=True)
    inputs = [torch.rand(shape, device='cuda') for shape in ((2, 3, 40, 56), (2, 3, 40, 56), (1, 3, 33, 47))]
    with torch.no_grad():
        plain = [net(x) for x in inputs]
    outs = [up.run_network(x) for x in inputs]  # the second call of a size replays its graph
    with torch.inference_mode():  # as upscale_tensor calls it: the same graphs serve both modes
        outs.append(up.run_network(inputs[0]))
    plain.append(plain[0])
    tile = torch.cat([inputs[1], inputs[1]], dim=3)[..., :56]  # a strided view, as a tile of a larger image
    outs.append(up.run_network(tile))  # is copied into the graph's buffer: no capture of its own
    plain.append(plain[1])
    graphs = up._network.graphs
    assert len(graphs) == 2 and all(g is not None for g in graphs.values()), graphs
    for out, ref in zip(outs, plain):  # each output is the caller's: later replays did not overwrite it
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-3


@needs_cuda
def test_on_a_gpu_compiled_fp16_runs_channels_last_as_close_to_fp32_as_eager_fp16(golden, golden_net, monkeypatch):
    net = copy.deepcopy(golden_net).cuda()
    x = golden['input'].cuda()
    with torch.no_grad():
        ref = net(x)
    eager = ASIDUpsampler(net, device='cuda', precision='fp16', tile=0).run_network(x)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    up = ASIDUpsampler(net, device='cuda', precision='fp16', tile=0, compile=[tuple(x.shape[-2:])])
    first, replay = up.run_network(x), up.run_network(x)  # captured and run, then replayed
    assert torch.equal(first, replay)
    # on a GPU the compiled network runs channels-last, the sizes left eager contiguous; cuDNN
    # timed its algorithms for the capture only
    assert up.compiled_memory_format == torch.channels_last and up.memory_format == torch.contiguous_format
    other = x[..., :-1]  # a size left eager
    with torch.no_grad():
        assert up.net.input.weight.is_contiguous() and (up.run_network(other) - net(other)).abs().max() <= 2e-3
    assert not torch.backends.cudnn.benchmark
    assert psnr(first, ref) >= min(50.0, psnr(eager, ref) - 1), (psnr(first, ref), psnr(eager, ref))
    assert (first - ref).abs().max() <= 2e-3

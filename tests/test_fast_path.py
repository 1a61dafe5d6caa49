"""Fast paths (``fast_path='compile'``, ``precision='bf16'|'fp16'``) compute the plain path's function.

The plain eager path is the definition; the switches change how it runs, never what it
computes, the parameters or the state_dict.
"""
import copy

import pytest
import torch

from asid_arch import ASID  # first: patches BasicSR for this stack before it is imported
from basicsr.archs import build_network  # noqa: I001

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

    def run(fast_path):
        model = copy.deepcopy(net).set_fast_path(fast_path)
        out = model(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters()}

    plain_out, plain_grads = run('none')
    fast_out, fast_grads = run('compile')
    assert fast_out.shape == plain_out.shape == (2, 3, 42, 26)
    assert (fast_out - plain_out).abs().max() <= 1e-4
    for name, grad in plain_grads.items():
        assert torch.allclose(fast_grads[name], grad, rtol=1e-3, atol=1e-5), name


def test_compile_plumbing_traces_the_network_whole_and_keeps_its_function(monkeypatch):
    # The cheap check of the compile path: the same call of torch.compile that fast_path='compile'
    # makes, with Inductor replaced by the 'eager' backend, so that Dynamo traces the whole network
    # (every reshape, the shared attention, padding and cropping) without generating C++ kernels.
    import asid_arch.asid_arch as arch
    calls, real_compile = [], torch.compile

    def compile_eagerly(fn, **kwargs):
        calls.append(kwargs)
        return real_compile(fn, backend='eager', fullgraph=True, **kwargs)

    monkeypatch.setattr(arch, '_compiled_bodies', {})
    monkeypatch.setattr(arch.torch, 'compile', compile_eagerly)
    torch._dynamo.reset()
    try:
        _compare_compiled_with_plain()
        ASID(upscale=2, num_groups=1, num_feat=8, fast_path='compile')(torch.rand(1, 3, 8, 8))
    finally:
        monkeypatch.undo()
        torch._dynamo.reset()
    assert calls == [{'mode': None, 'dynamic': False}]  # compiled once per device type, shared by instances


@pytest.mark.slow
def test_compiled_forward_and_gradients_equal_the_plain_path():
    # the full comparison through Inductor: ~2 min of C++ compilation on a 2-core CPU (pytest -m slow)
    torch._dynamo.reset()
    _compare_compiled_with_plain()


@pytest.mark.parametrize('precision, min_psnr', [('bf16', 40.0), ('fp16', 50.0)])
def test_reduced_precision_output_is_close_to_fp32_by_psnr_and_keeps_the_input_dtype(golden, golden_net,
                                                                                      precision, min_psnr):
    x = golden['input']
    with torch.no_grad():
        ref = golden_net(x)
        out = copy.deepcopy(golden_net).set_fast_path(precision=precision)(x)
    assert out.dtype == torch.float32
    assert psnr(out, ref) >= min_psnr, psnr(out, ref)


def test_bf16_autocast_trains_the_fp32_parameters():
    torch.manual_seed(0)
    net = ASID(upscale=2, num_groups=2, num_feat=16, precision='bf16')
    net(torch.rand(1, 3, 16, 16)).mean().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None for p in net.parameters())


def test_switches_leave_parameters_and_state_dict_keys_alone(golden):
    plain = ASID().state_dict()
    fast = ASID(fast_path='compile', precision='bf16').state_dict()
    assert list(fast) == list(plain)
    assert sorted(fast) == sorted(golden['state_dict'])


def test_option_file_switches_reach_the_network():
    net = build_network({'type': 'ASID', 'upscale': 4, 'fast_path': 'compile', 'precision': 'bf16'})
    assert (net.fast_path, net.precision) == ('compile', 'bf16')


def test_unknown_switch_values_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="fast_path must be one of none, compile, compile_train; got 'turbo'"):
        ASID(fast_path='turbo')
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16; got 'fp8'"):
        ASID().set_fast_path(precision='fp8')


def test_compile_train_compiles_training_steps_and_validates_eagerly(monkeypatch):
    import asid_arch.asid_arch as arch
    calls = []

    def fake_compiled_body(device_type):
        calls.append(device_type)
        return ASID.body  # stands in for the compiled function: same signature, same math

    monkeypatch.setattr(arch, 'compiled_body', fake_compiled_body)
    net = ASID(upscale=2, num_groups=1, num_feat=8, fast_path='compile_train')
    net.train()(torch.rand(1, 3, 16, 16))
    assert calls == ['cpu']
    with torch.no_grad():
        net.eval()(torch.rand(1, 3, 20, 12))  # validation: images of any size, no compilation
    assert calls == ['cpu']

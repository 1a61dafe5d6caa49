"""The ASID network: release compatibility (keys, parameter counts, golden output) and behaviour."""
import json
import os

import pytest
import torch

import asid_arch  # noqa: F401  (patches BasicSR, registers the networks)
from asid_arch import ASID, ASID_D8
from asid_arch.asid_arch import add_windows, window_partition
from conftest import DATA

@pytest.fixture(scope='module')
def net(golden):
    """x4 ASID with the golden (seeded, non-trivial) weights, eval mode, [0, 1] range."""
    model = ASID(upscale=4, num_groups=3).eval()
    model.load_state_dict(golden['state_dict'], strict=True)
    return model


def run(model, x):
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------- release compatibility
@pytest.mark.parametrize('cls, upscale, expected', [
    (ASID, 2, 297_516), (ASID, 3, 304_011), (ASID, 4, 313_104),
    (ASID_D8, 2, 732_146), (ASID_D8, 3, 738_641), (ASID_D8, 4, 747_734),
])
def test_parameter_count_equals_the_papers_table(cls, upscale, expected):
    model = cls(upscale=upscale)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize('manifest, cls', [('keys-asid-x4.json', ASID), ('keys-asid_d8-x4.json', ASID_D8)])
def test_state_dict_equals_released_key_manifest_and_loads_strictly(manifest, cls):
    with open(os.path.join(DATA, manifest)) as f:
        shapes = {k: list(v) for k, v in json.load(f).items()}
    model = cls(upscale=4)
    # exactly the released keys and shapes: nothing missing, no extra buffers (rel_pos_index is non-persistent)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes
    gen = torch.Generator().manual_seed(0)
    released = {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}
    model.load_state_dict(released, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, released[key]), key


def test_golden_output_reproduced_within_1e_5_and_golden_uses_value_range_0_1(golden, net):
    # The golden file was produced on [0, 1] inputs by the network WITHOUT the [-1, 1] mapping
    # (its metadata says value_range [0, 1]); the same weights with value_range=(-1, 1) are far off.
    assert list(golden['value_range']) == [0, 1]
    assert (golden['upscale'], golden['num_groups']) == (4, 3)
    out = run(net, golden['input'])
    assert out.shape == golden['output'].shape == (1, 3, 84, 120)  # 21x30 input: padded to 24x32, cropped back
    assert (out - golden['output']).abs().max().item() <= 1e-5

    mapped = ASID(upscale=4, num_groups=3, value_range=(-1, 1)).eval()
    mapped.load_state_dict(golden['state_dict'])
    assert (run(mapped, golden['input']) - golden['output']).abs().max().item() > 0.1


# ---------------------------------------------------------------- windows
@pytest.mark.parametrize('grid', [False, True], ids=['local', 'grid'])
def test_window_partition_follows_the_spec_index_formula(grid):
    ws, b, c, h, w = 4, 2, 3, 8, 12
    gh, gw = h // ws, w // ws
    x = torch.randn(b, c, h, w)
    t = window_partition(x, ws, grid=grid)
    assert t.shape == (b * gh * gw, ws * ws, c)
    for n in range(b):
        for i in range(gh):
            for j in range(gw):
                for u in range(ws):
                    for v in range(ws):
                        row, col = (i + gh * u, j + gw * v) if grid else (ws * i + u, ws * j + v)
                        assert torch.equal(t[(n * gh + i) * gw + j, u * ws + v], x[n, :, row, col])
    assert torch.equal(add_windows(torch.zeros_like(x), t, ws, grid=grid), x)


def test_block0_attention_maps_are_passed_unchanged_and_in_order_to_every_sharing_group(net):
    computed, received = [], {}
    hooks = [net.block0.register_forward_hook(lambda m, args, out: computed.extend(out[1]))]
    for g in (1, 2):
        for layer in ('SLA1', 'SGA1', 'SLA2', 'SGA2', 'SLA3', 'SGA3'):
            attn = getattr(net, f'block{g}').residual_layer.get_submodule(f'{layer}.attn')
            hooks.append(attn.register_forward_hook(
                lambda m, args, out, key=(g, layer): received.__setitem__(key, args[1])))
    try:
        run(net, torch.rand(1, 3, 16, 24))
    finally:
        for h in hooks:
            h.remove()
    assert len(computed) == 6 and all(a.shape == (6, 64, 64) for a in computed)  # 2x3 windows of 8x8
    for g in (1, 2):
        for k, layer in enumerate(('SLA1', 'SGA1', 'SLA2', 'SGA2', 'SLA3', 'SGA3')):
            assert received[(g, layer)] is computed[k]


# ---------------------------------------------------------------- input sizes
@pytest.mark.parametrize('shape', [(1, 3, 17, 23), (2, 3, 9, 40), (3, 3, 24, 16), (1, 3, 33, 10)])
def test_any_size_batch_odd_and_non_square_inputs_give_scaled_finite_output(shape):
    torch.manual_seed(0)
    model = ASID(upscale=3, num_groups=2).eval()
    out = run(model, torch.rand(shape))
    assert out.shape == (shape[0], 3, shape[2] * 3, shape[3] * 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('hw', [(1, 1), (3, 5), (7, 7), (8, 8), (9, 9), (1, 30), (30, 2)])
def test_tiny_inputs_give_scaled_finite_output(net, hw):
    out = run(net, torch.rand(2, 3, *hw))
    assert out.shape == (2, 3, hw[0] * 4, hw[1] * 4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('value_range, grey', [((0, 1), 0.0), ((-1, 1), 0.5)])
def test_tiny_input_is_run_zero_padded_to_16px_in_the_internal_range(golden, value_range, grey):
    # The fallback is exactly "pad bottom/right to 16 px with the internal zero" (0 for [0, 1];
    # 0.5 = mid-grey for [-1, 1]), then crop: nothing else about the network changes.
    model = ASID(upscale=4, num_groups=3, value_range=value_range).eval()
    model.load_state_dict(golden['state_dict'])
    x = torch.rand(1, 3, 5, 7)
    padded = torch.full((1, 3, 16, 16), grey)
    padded[..., :5, :7] = x
    assert model.padded_size(5, 7) == (16, 16)
    torch.testing.assert_close(run(model, x), run(model, padded)[..., :20, :28], rtol=0, atol=1e-6)


@pytest.mark.parametrize('hw', [(9, 9), (16, 16), (17, 30), (9, 41)])
def test_tiny_input_fallback_leaves_outputs_unchanged_where_the_release_runs(net, hw):
    # min_size = window_size is the release's padding rule (multiples of 8 only). For inputs whose
    # padded size is already >= 16 on both sides, the fallback must not change a single value.
    x = torch.rand(1, 3, *hw)
    out = run(net, x)
    release_rule = ASID(upscale=4, num_groups=3).eval()
    release_rule.load_state_dict(net.state_dict())
    release_rule.min_size = release_rule.window_size
    assert torch.equal(run(release_rule, x), out)


def test_release_padding_rule_fails_on_8px_inputs_which_the_fallback_fixes(net):
    release_rule = ASID(upscale=4, num_groups=3).eval()
    release_rule.min_size = release_rule.window_size
    with pytest.raises(RuntimeError):  # ESA: 8 px -> 3 px after the strided conv, nothing for a 7x7 max-pool
        run(release_rule, torch.rand(1, 3, 8, 20))
    assert run(net, torch.rand(1, 3, 8, 20)).shape == (1, 3, 32, 80)


# ---------------------------------------------------------------- value range
def test_value_range_minus1_1_equals_mapping_around_the_unmapped_network(golden):
    unmapped = ASID(upscale=4, num_groups=3, value_range=(0, 1)).eval()
    mapped = ASID(upscale=4, num_groups=3, value_range=[-1, 1]).eval()  # a list, as read from YAML
    unmapped.load_state_dict(golden['state_dict'])
    mapped.load_state_dict(golden['state_dict'])
    x = torch.rand(2, 3, 13, 19)  # not a multiple of 8: the padding value matters too
    expected = (run(unmapped, x * 2 - 1) + 1) / 2
    torch.testing.assert_close(run(mapped, x), expected, rtol=0, atol=1e-6)
    assert (run(unmapped, x) - expected).abs().max() > 1e-2  # the mapping is not a no-op


@pytest.mark.parametrize('value_range', [(0, 1), [0, 1], (-1, 1), [-1.0, 1.0]])
def test_value_range_accepts_tuples_and_yaml_lists(value_range):
    assert ASID(upscale=2, num_groups=1, value_range=value_range).value_range == tuple(int(v) for v in value_range)


@pytest.mark.parametrize('value_range', [(0, 255), (-1, 0), 'zero-one', (0, 1, 2), None])
def test_value_range_other_than_0_1_or_minus1_1_is_a_value_error(value_range):
    with pytest.raises(ValueError, match=r'value_range must be \(0, 1\) or \(-1, 1\), got'):
        ASID(upscale=2, num_groups=1, value_range=value_range)


@pytest.mark.parametrize('upscale', [0, -2, 2.5, '4', True, None])
def test_upscale_must_be_a_positive_int(upscale):
    with pytest.raises(ValueError, match=r'upscale must be a positive integer, got'):
        ASID(upscale=upscale)


@pytest.mark.parametrize('kwargs, message', [({'num_groups': 0}, 'num_groups'), ({'num_feat': 30}, 'num_feat'),
                                             ({'window_size': 0}, 'window_size')])
def test_other_constructor_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ASID(upscale=2, **kwargs)


# ---------------------------------------------------------------- behaviour
def test_an_images_output_does_not_depend_on_its_batch_mates(net):
    a, b = torch.rand(1, 3, 20, 27), torch.rand(1, 3, 20, 27)
    both = run(net, torch.cat([a, b]))
    torch.testing.assert_close(both[:1], run(net, a), rtol=0, atol=1e-5)
    torch.testing.assert_close(both[1:], run(net, b), rtol=0, atol=1e-5)


def test_gradients_reach_every_parameter_including_block0_attention_bias():
    torch.manual_seed(0)
    model = ASID(upscale=2, num_groups=3).train()
    out = model(torch.rand(2, 3, 16, 20))
    (out * torch.randn_like(out)).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    for layer in ('SLA1', 'SGA1', 'SLA2', 'SGA2', 'SLA3', 'SGA3'):
        bias = model.block0.residual_layer[0].get_submodule(f'{layer}.attn.rel_pos_bias').weight
        assert (bias.grad != 0).all(), layer  # all 225 relative offsets occur in an 8x8 window


def test_networks_are_registered_and_build_from_basicsr_options():
    from basicsr.archs import build_network
    from basicsr.utils.registry import ARCH_REGISTRY

    assert ARCH_REGISTRY.get('ASID') is asid_arch.ASID
    assert ARCH_REGISTRY.get('ASID_D8') is asid_arch.ASID_D8
    model = build_network({'type': 'ASID', 'upscale': 2, 'value_range': [-1, 1]})
    assert type(model) is ASID and model.upscale == 2 and model.value_range == (-1, 1) and model.num_groups == 3
    d8 = build_network({'type': 'ASID_D8', 'upscale': 3})
    assert type(d8) is ASID_D8 and d8.num_groups == 8
    assert sum(p.numel() for p in d8.parameters()) == 738_641


@pytest.mark.parametrize('shape, message', [
    ((1, 1, 16, 16), r'expects 3 input channels .* got 1 channels'),
    ((1, 4, 16, 16), r'expects 3 input channels .* got 4 channels'),
    ((3, 16, 16), r'expects a 4-D tensor \(N, 3, H, W\), got a 3-D tensor of shape \(3, 16, 16\)'),
    ((1, 1, 3, 16, 16), r'expects a 4-D tensor .* got a 5-D tensor'),
    ((0, 3, 16, 16), r'non-empty'),
])
def test_bad_input_shape_is_a_value_error_saying_expected_and_got(net, shape, message):
    with pytest.raises(ValueError, match=message):
        net(torch.rand(shape))

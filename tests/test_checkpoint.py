"""Checkpoint helpers: formats, config inference, overrides, and refusing bad or unsafe files."""

import pytest
import torch

from asid_arch import ASID, CheckpointError, build_asid, infer_config, load_state_dict

@pytest.fixture(scope='module')
def state_dict(golden):
    return golden['state_dict']


def same_weights(model, sd):
    got = model.state_dict()
    return got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def error_of(call, *args, **kwargs):
    with pytest.raises(CheckpointError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert '\n' not in message  # one line
    return message


# ---------------------------------------------------------------- accepted layouts
def test_raw_release_file_loads_and_defaults_to_value_range_minus1_1(tmp_path, state_dict):
    path = tmp_path / 'ASID_x4.pth'
    torch.save(state_dict, path)
    sd, is_basicsr = load_state_dict(path)
    assert not is_basicsr and sd.keys() == state_dict.keys()
    model = build_asid(str(path))
    assert isinstance(model, ASID) and not model.training
    assert model.value_range == (-1, 1) and model.upscale == 4 and model.num_groups == 3
    assert same_weights(model, state_dict)


def test_basicsr_params_checkpoint_loads_and_defaults_to_value_range_0_1(tmp_path, golden, state_dict):
    path = tmp_path / 'net_g_1000.pth'
    torch.save({'params': state_dict}, path)
    sd, is_basicsr = load_state_dict(str(path))
    assert is_basicsr
    model = build_asid(path)
    assert model.value_range == (0, 1) and same_weights(model, state_dict)
    with torch.no_grad():
        out = model(golden['input'])
    assert (out - golden['output']).abs().max().item() <= 1e-5


def test_params_ema_is_preferred_over_params(tmp_path, state_dict):
    ema = {k: v + 1 for k, v in state_dict.items()}
    path = tmp_path / 'net_g_ema.pth'
    torch.save({'params': state_dict, 'params_ema': ema}, path)
    sd, is_basicsr = load_state_dict(path)
    assert is_basicsr and all(torch.equal(sd[k], ema[k]) for k in ema)
    sd, _ = load_state_dict({'params_ema': ema})
    assert all(torch.equal(sd[k], ema[k]) for k in ema)


@pytest.mark.parametrize('wrap', [lambda sd: sd, lambda sd: {'params': sd}], ids=['raw', 'params'])
def test_ddp_module_prefix_is_stripped(tmp_path, state_dict, wrap):
    path = tmp_path / 'ddp.pth'
    torch.save(wrap({f'module.{k}': v for k, v in state_dict.items()}), path)
    sd, _ = load_state_dict(path)
    assert sd.keys() == state_dict.keys()
    assert same_weights(build_asid(path), state_dict)


def test_in_memory_state_dict_is_accepted(state_dict):
    model = build_asid(dict(state_dict), value_range=(0, 1))
    assert model.value_range == (0, 1) and same_weights(model, state_dict)


# ---------------------------------------------------------------- config inference and overrides
@pytest.mark.parametrize('upscale, num_groups', [(2, 3), (3, 8), (4, 1)])
def test_config_is_inferred_from_shapes(upscale, num_groups):
    sd = ASID(upscale=upscale, num_groups=num_groups).state_dict()
    assert infer_config(sd) == {'upscale': upscale, 'num_groups': num_groups, 'num_feat': 48, 'window_size': 8}
    model = build_asid(sd, upscale=upscale, num_groups=num_groups)
    assert (model.upscale, model.num_groups) == (upscale, num_groups)


def test_wrong_scale_override_names_the_file_and_both_scales(tmp_path, state_dict):
    path = tmp_path / 'ASID_x4.pth'
    torch.save(state_dict, path)
    message = error_of(build_asid, path, upscale=2)
    assert message == f'checkpoint {path} is a x4 model, but upscale=2 was requested'


def test_wrong_group_count_override_is_refused(state_dict):
    assert 'has 3 groups, but num_groups=8 was requested' in error_of(build_asid, state_dict, num_groups=8)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


# ---------------------------------------------------------------- refused files
def test_missing_file_is_refused(tmp_path):
    path = tmp_path / 'nope.pth'
    assert error_of(load_state_dict, path) == f'{path}: checkpoint file not found'
    error_of(build_asid, str(path))


def test_truncated_file_is_refused(tmp_path, state_dict):
    full = tmp_path / 'full.pth'
    torch.save(state_dict, full)
    data = full.read_bytes()
    path = tmp_path / 'half.pth'
    path.write_bytes(data[:len(data) // 2])
    message = error_of(load_state_dict, path)
    assert message.startswith(f'{path}: cannot read checkpoint (truncated or corrupt file?)')


@pytest.mark.parametrize('content', [b'', b'not a checkpoint at all' * 8], ids=['empty', 'garbage'])
def test_corrupt_file_is_refused(tmp_path, content):
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    assert error_of(load_state_dict, path).startswith(f'{path}: ')


CALLS = []


def _record_call(tag):
    """Would run on unpickling if the loader were unsafe."""
    CALLS.append(tag)
    return tag


class CarriesCode:
    def __reduce__(self):
        return (_record_call, ('executed while loading',))


def test_pickle_carrying_code_is_refused_and_not_executed(tmp_path, state_dict):
    path = tmp_path / 'trojan.pth'
    torch.save({'params': dict(state_dict), 'payload': CarriesCode()}, path)
    CALLS.clear()
    message = error_of(load_state_dict, path)
    assert message.startswith(f'{path}: refused to load') and 'weights_only=True' in message
    error_of(build_asid, path)
    assert CALLS == []


def test_another_networks_state_dict_is_refused(tmp_path):
    path = tmp_path / 'conv.pth'
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), path)
    message = error_of(build_asid, path)
    assert message.startswith(f'{path}: not an ASID state_dict') and "'weight', 'bias'" in message
    assert 'not an ASID state_dict' in error_of(load_state_dict, {'params': torch.nn.Linear(2, 2).state_dict()})


@pytest.mark.parametrize('obj, found', [
    ([torch.zeros(1)], 'found list'),
    ({'params': 3}, "expected 'params' to hold a state_dict"),
    ({'input.weight': torch.zeros(1), 'epoch': 3}, "found int under key 'epoch'"),
], ids=['list', 'params-int', 'mixed'])
def test_object_that_is_not_a_state_dict_is_refused(tmp_path, obj, found):
    path = tmp_path / 'odd.pth'
    torch.save(obj, path)
    assert found in error_of(load_state_dict, path)


def test_partial_or_mismatched_weights_are_never_loaded_silently(state_dict):
    partial = {k: v for k, v in state_dict.items() if not k.startswith('block1.esa.')}
    message = error_of(build_asid, partial)
    assert 'missing 10' in message and 'block1.esa.conv1.weight' in message

    extra = {**state_dict, 'block0.extra.weight': torch.zeros(1)}
    assert "unexpected 1: 'block0.extra.weight'" in error_of(build_asid, extra)

    reshaped = {**state_dict, 'output.bias': torch.zeros(47)}
    assert "wrong shape 1: 'output.bias' is (47,) in the file, (48,) in the model" in error_of(build_asid, reshaped)


def test_basicsr_checkpoint_takes_value_range_from_the_option_file_basicsr_copied_beside_models(tmp_path,
                                                                                              state_dict):
    # experiments/<run>/<run>.yml and experiments/<run>/models/net_g_latest.pth, as BasicSR lays them out
    run = tmp_path / 'experiments' / 'run'
    (run / 'models').mkdir(parents=True)
    path = run / 'models' / 'net_g_latest.pth'
    torch.save({'params': state_dict}, path)
    assert build_asid(str(path)).value_range == (0, 1)  # no option file: BasicSR's range
    (run / 'run.yml').write_text('# CMD: basicsr train\nname: run\nnetwork_g:\n  type: ASID\n  upscale: 4\n'
                                 '  value_range: [-1, 1]\n')
    assert build_asid(str(path)).value_range == (-1, 1)
    assert build_asid(str(path), value_range=(0, 1)).value_range == (0, 1)  # an explicit choice wins


def test_a_file_that_is_no_torch_save_file_says_so(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('not a checkpoint')
    assert error_of(load_state_dict, path) == (f'{path}: cannot read checkpoint: not a torch.save file (neither a zip '
                                               'archive nor a pickle)')

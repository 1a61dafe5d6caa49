"""ASID through spandrel's architecture registry (asid_arch.spandrel_arch)."""
import json
import os

import pytest
import torch

spandrel = pytest.importorskip('spandrel')

from asid_arch import ASID, ASID_D8, build_asid  # noqa: E402
from asid_arch import spandrel_arch  # noqa: E402  (registers ASID)

DATA = os.path.join(os.path.dirname(__file__), 'data')


def release_state(manifest, seed=0):
    shapes = json.load(open(os.path.join(DATA, manifest)))
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in shapes.items()}


@pytest.mark.parametrize('manifest, cls, groups', [('keys-asid-x4.json', ASID, 3),
                                                   ('keys-asid_d8-x4.json', ASID_D8, 8)])
def test_model_loader_detects_release_files_with_scale_and_groups_from_shapes(manifest, cls, groups, tmp_path):
    state = release_state(manifest)
    torch.save(state, tmp_path / 'ASID_x4.pth')
    descriptor = spandrel.ModelLoader().load_from_file(str(tmp_path / 'ASID_x4.pth'))
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    assert descriptor.architecture.id == 'ASID' and type(descriptor.model) is cls
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (4, 3, 3)
    assert f'{groups} groups' in descriptor.tags and descriptor.model.value_range == (-1, 1)
    x = torch.rand(1, 3, 13, 10)  # any size: the network pads to the window itself
    with torch.no_grad():
        assert torch.equal(descriptor(x), build_asid(state)(x).clamp(0, 1))  # spandrel clamps


def test_model_loader_loads_our_params_checkpoint_and_load_file_keeps_its_value_range(tmp_path):
    torch.manual_seed(0)
    net = ASID(upscale=2, num_groups=2, num_feat=16)
    path = tmp_path / 'net_g_5.pth'
    torch.save({'params': net.state_dict(), 'asid': {'type': 'ASID', 'value_range': [0, 1]}}, path)
    descriptor = spandrel.ModelLoader().load_from_file(str(path))  # spandrel unwraps 'params'
    assert descriptor.scale == 2 and descriptor.model.num_groups == 2 and descriptor.model.num_feat == 16
    assert descriptor.model.value_range == (-1, 1)  # spandrel passes no metadata: the release's range
    descriptor = spandrel_arch.load_file(path)
    assert descriptor.model.value_range == (0, 1)
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(descriptor(x), build_asid(str(path))(x).clamp(0, 1))


def test_other_architectures_are_not_taken_for_asid():
    from spandrel.architectures.SPAN import SPAN
    descriptor = spandrel.ModelLoader().load_from_state_dict(SPAN(num_in_ch=3, num_out_ch=3, upscale=2).state_dict())
    assert descriptor.architecture.id == 'SPAN'
    assert not spandrel_arch.ASIDArch().detect(SPAN(num_in_ch=3, num_out_ch=3, upscale=2).state_dict())


def test_registering_twice_keeps_one_entry():
    before = len(spandrel.MAIN_REGISTRY)
    spandrel_arch.register()
    assert len(spandrel.MAIN_REGISTRY) == before and 'ASID' in spandrel.MAIN_REGISTRY

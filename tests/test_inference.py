"""The Python inference API (asid_arch.inference.ASIDUpsampler): arrays and tensors in, upscaled out."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asid_arch import ASID
from asid_arch.inference import LUMA, ASIDUpsampler
from asid_arch.runtime import resolve_precision
from asid_arch.tiling import tile_starts
from conftest import compile_with_backend


@pytest.fixture(scope='module')
def tiny_net():
    torch.manual_seed(0)
    return ASID(upscale=2, num_groups=1, num_feat=8).eval()


@pytest.fixture(scope='module')
def up(tiny_net):
    return ASIDUpsampler(tiny_net, device='cpu')


def smooth(h, w, c=3, seed=0):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.5 + 0.4 * np.sin(x / (3 + seed + i) + y / 7) for i in range(c)], -1)


@pytest.mark.parametrize('shape', [(1, 1), (1, 1, 3), (5, 7), (6, 5, 1), (6, 5, 2), (9, 8, 3), (9, 8, 4)])
@pytest.mark.parametrize('dtype', [np.uint8, np.uint16, np.float32, np.float64])
def test_upscale_keeps_layout_and_dtype_down_to_one_pixel(up, shape, dtype):
    data = np.random.default_rng(0).random(shape)
    img = (data * np.iinfo(dtype).max).astype(dtype) if np.issubdtype(dtype, np.integer) else data.astype(dtype)
    out = up.upscale(img)
    assert out.shape == (shape[0] * 2, shape[1] * 2, *shape[2:])
    assert out.dtype == (np.float32 if np.issubdtype(dtype, np.floating) else dtype)


def test_rgb_array_goes_through_the_network_unchanged(up, tiny_net):
    rgb = smooth(13, 11)
    with torch.no_grad():
        ref = tiny_net(torch.from_numpy(rgb.transpose(2, 0, 1))[None]).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    # the same function; on the CPU it runs channels-last, which rounds differently (~1e-7)
    np.testing.assert_allclose(up.upscale(rgb), ref, rtol=0, atol=2e-6)


def test_uint16_is_computed_in_float_not_in_8_bits(up):
    img = (smooth(12, 12) * 65535).astype(np.uint16)
    out = up.upscale(img)
    ref = up.upscale(img.astype(np.float32) / 65535)
    np.testing.assert_array_equal(out, np.round(ref * 65535).astype(np.uint16))
    inside = out[(out > 0) & (out < 65535)]
    assert inside.size > 100 and np.count_nonzero(inside % 257) > 0.9 * inside.size  # not 8-bit values scaled up


def test_greyscale_runs_as_rgb_and_returns_its_luma(up):
    grey = smooth(10, 12, 1)[..., 0]
    out = up.upscale(grey)
    rgb = up.upscale(np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_allclose(out, rgb @ np.array(LUMA, np.float32), atol=1e-6)


def test_alpha_is_upscaled_by_asid_and_reattached_without_touching_rgb(up):
    rgba = smooth(12, 10, 4)
    out = up.upscale(rgba)
    np.testing.assert_array_equal(out[..., :3], up.upscale(rgba[..., :3]))
    alpha_as_rgb = up.upscale(np.repeat(rgba[..., 3:], 3, axis=2))
    np.testing.assert_allclose(out[..., 3], alpha_as_rgb.mean(-1), atol=1e-6)


def test_bicubic_alpha_is_plain_bicubic_interpolation(tiny_net):
    up = ASIDUpsampler(tiny_net, device='cpu', alpha='bicubic')
    rgba = smooth(12, 10, 4)
    ref = F.interpolate(torch.from_numpy(rgba[..., 3])[None, None], scale_factor=2, mode='bicubic',
                        align_corners=False).clamp(0, 1)[0, 0].numpy()
    np.testing.assert_allclose(up.upscale(rgba)[..., 3], ref, atol=1e-6)
    assert up.network_passes(rgba) == 1


def test_constant_alpha_stays_exactly_constant(up):
    rgba = (smooth(9, 9, 4) * 255).astype(np.uint8)
    rgba[..., 3] = 255
    assert up.network_passes(rgba) == 1
    assert (up.upscale(rgba)[..., 3] == 255).all()


def test_upscale_tensor_takes_batches_and_single_images_and_clamps(up, tiny_net):
    x = torch.rand(2, 3, 9, 17)
    out = up.upscale_tensor(x)
    assert out.shape == (2, 3, 18, 34) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(out, tiny_net(x).clamp(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(up.upscale_tensor(x[1].double()), out[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize('bad', [torch.rand(3, 8), torch.rand(1, 4, 8, 8), torch.zeros(1, 3, 0, 8),
                                 torch.zeros(1, 3, 8, 8, dtype=torch.uint8)])
def test_upscale_tensor_rejects_what_is_not_an_rgb_float_batch(up, bad):
    with pytest.raises(ValueError):
        up.upscale_tensor(bad)


@pytest.mark.parametrize('bad', [np.zeros((4, 4, 5), np.uint8), np.zeros((0, 4, 3), np.uint8),
                                 np.zeros((4, 4, 3), np.int32), np.zeros((2, 4, 4, 3), np.uint8)])
def test_upscale_rejects_unsupported_arrays(up, bad):
    with pytest.raises(ValueError):
        up.upscale(bad)


def test_checkpoint_file_and_loaded_state_dict_give_the_same_network(tmp_path, tiny_net):
    path = tmp_path / 'net.pth'
    torch.save({'params': tiny_net.state_dict()}, path)
    x = torch.rand(1, 3, 10, 10)
    ref = ASIDUpsampler(tiny_net, device='cpu').upscale_tensor(x)
    for source in (path, str(path), {'params': tiny_net.state_dict()}):
        up = ASIDUpsampler(source, device='cpu')
        assert up.scale == 2 and up.net.value_range == (0, 1)
        torch.testing.assert_close(up.upscale_tensor(x), ref, rtol=0, atol=0)


def test_precision_auto_is_fp32_on_cpu_and_reduced_precisions_warn_there(tiny_net):
    assert ASIDUpsampler(tiny_net, device='cpu').precision == 'fp32'
    with pytest.warns(UserWarning, match='slower'):
        bf16 = ASIDUpsampler(tiny_net, device='cpu', precision='bf16')
    x = torch.rand(1, 3, 16, 16)
    out = bf16.upscale_tensor(x)
    assert out.dtype == torch.float32
    ref = ASIDUpsampler(tiny_net, device='cpu').upscale_tensor(x)
    assert (out - ref).abs().max() < 0.1
    with pytest.raises(ValueError, match='precision'):
        resolve_precision('fp8', torch.device('cpu'))


def test_cast_mode_leaves_the_callers_network_in_fp32(tiny_net):
    with pytest.warns(UserWarning):
        up = ASIDUpsampler(tiny_net, device='cpu', precision='bf16')
    assert next(up.net.parameters()).dtype == torch.bfloat16
    assert next(tiny_net.parameters()).dtype == torch.float32
    assert up.upscale_tensor(torch.rand(1, 3, 8, 8)).dtype == torch.float32


class OverflowsInHalf(nn.Module):
    """Nearest x2 (an identity 1x1 conv, then repeat); inf when its conv runs in fp16, as an overflow."""

    upscale = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        nn.init.dirac_(self.conv.weight)

    def forward(self, x):
        out = F.interpolate(self.conv(x), scale_factor=2, mode='nearest')
        return out + float('inf') if out.dtype == torch.float16 else out


@pytest.mark.parametrize('compiled', [False, True], ids=['eager', 'compiled'])  # compiled: the check is in the graph
@pytest.mark.parametrize('amp', [False, True])
def test_fp16_overflow_is_recomputed_in_fp32_with_a_warning(amp, compiled, monkeypatch):
    if compiled:
        compile_with_backend(monkeypatch, 'eager')  # Dynamo's trace, no generated code: quick on a CPU
    with pytest.warns(UserWarning, match='slower'):
        up = ASIDUpsampler(OverflowsInHalf(), device='cpu', precision='fp16', amp=amp, tile=8, tile_overlap=2,
                           compile=compiled)
    x = torch.rand(1, 3, 12, 12)
    with pytest.warns(UserWarning, match='fp16 overflowed'):
        out = up.upscale_tensor(x)
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=2, mode='nearest'), rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_without_a_gpu_is_a_clear_error(tiny_net):
    with pytest.raises(ValueError, match='CUDA is not available'):
        ASIDUpsampler(tiny_net, device='cuda')


def test_automatic_choice_tiles_only_what_does_not_fit(tiny_net):
    roomy = ASIDUpsampler(tiny_net, device='cpu', max_memory=1 << 40)
    assert roomy.plan(4000, 3000) is None and roomy.describe_plan(4000, 3000) == 'whole image'
    tight = ASIDUpsampler(tiny_net, device='cpu', max_memory=10 << 20)
    tile = tight.plan(4000, 3000)
    assert tile is not None and tile % 8 == 0 and tile < 3000
    assert tight.describe_plan(4000, 3000).startswith(f'tiles of {tile} px, overlap 24 px')
    assert tight.plan(40, 40) is None  # never smaller tiles than MIN_AUTO_TILE: 40 px fits in one
    assert ASIDUpsampler(tiny_net, device='cpu', tile=0, max_memory=1).plan(4000, 3000) is None


def test_tile_at_least_the_image_size_is_the_whole_image_bit_for_bit(tiny_net):
    x = torch.rand(1, 3, 20, 28)
    whole = ASIDUpsampler(tiny_net, device='cpu', tile=0).upscale_tensor(x)
    torch.testing.assert_close(ASIDUpsampler(tiny_net, device='cpu', tile=28).upscale_tensor(x), whole,
                               rtol=0, atol=0)


class LocalNet(nn.Module):
    """A purely convolutional x2 network: receptive field radius 3 px."""

    upscale = 2

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        return torch.sigmoid(self.body(x))


def _interior(size, tile, overlap, radius):
    """LR positions whose every covering tile sees them at least ``radius`` px from a cut edge."""
    ok = np.ones(size, bool)
    for start in tile_starts(size, tile, overlap):
        end = min(start + tile, size)
        for p in range(start, end):
            near_cut = (start > 0 and p - start < radius) or (end < size and end - 1 - p < radius)
            ok[p] &= not near_cut
    return ok


def test_tiled_output_equals_whole_image_away_from_tile_seams():
    torch.manual_seed(0)
    net = LocalNet().eval()
    x = torch.rand(1, 3, 70, 90)
    whole = ASIDUpsampler(net, device='cpu', tile=0).upscale_tensor(x)
    tiled = ASIDUpsampler(net, device='cpu', tile=32, tile_overlap=12).upscale_tensor(x)
    rows = np.repeat(_interior(70, 32, 12, 3), 2)
    cols = np.repeat(_interior(90, 32, 12, 3), 2)
    mask = torch.from_numpy(rows[:, None] & cols[None, :])
    assert mask.float().mean() > 0.5  # most of the image is away from seams with this overlap
    torch.testing.assert_close(tiled[..., mask], whole[..., mask], rtol=0, atol=1e-5)
    assert (tiled - whole).abs().max() > 1e-3  # and the seams do differ: the comparison is not vacuous


def test_asid_tiled_differs_from_whole_image_everywhere_because_asid_is_not_local(tiny_net):
    """ASID is not local (squeeze-excitation, grid attention, ESA): documented, pinned down here."""
    x = torch.from_numpy(smooth(80, 80).transpose(2, 0, 1).copy())[None]
    whole = ASIDUpsampler(tiny_net, device='cpu', tile=0).upscale_tensor(x)
    tiled = ASIDUpsampler(tiny_net, device='cpu', tile=64, tile_overlap=24).upscale_tensor(x)
    assert tiled.shape == whole.shape
    assert not torch.equal(tiled, whole)


def test_module_without_upscale_needs_a_scale():
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
    with pytest.raises(ValueError, match='scale'):
        ASIDUpsampler(net, device='cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert ASIDUpsampler(net, device='cpu', scale=2).upscale(np.zeros((3, 3, 3), np.uint8)).shape == (6, 6, 3)


def test_the_host_memory_is_read_in_one_place_and_the_tile_plan_assumes_4_gib_when_unknown(monkeypatch):
    from asid_arch import runtime
    from basicsr_ext.common import resources
    monkeypatch.setattr(runtime, 'host_available_memory', lambda: None)
    assert resources.available_memory() is None  # the data set's room check says it cannot tell
    assert runtime.available_memory(torch.device('cpu')) == 4 << 30
    monkeypatch.setattr(runtime, 'host_available_memory', lambda: 123 << 20)
    assert resources.available_memory() == 123 << 20 == runtime.available_memory(torch.device('cpu'))

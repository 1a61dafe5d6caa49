"""Tiled evaluation is the ASID authors' loop exactly (``asid_arch.tiling.tiled_forward``)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asid_arch import ASID
from asid_arch.inference import ASIDUpsampler
from asid_arch.tiling import tiled_forward


def authors_tiled_test(net, img_lq, scale, tile=64, tile_overlap=24):
    """The loop of the authors' ``test_scripts/tester_Matlab.py``, restated from their code."""
    b, c, h, w = img_lq.size()
    tile = min(tile, h, w)
    stride = tile - tile_overlap
    h_idx_list = list(range(0, h - tile, stride)) + [h - tile]
    w_idx_list = list(range(0, w - tile, stride)) + [w - tile]
    E = torch.zeros(b, c, h * scale, w * scale).type_as(img_lq)
    W = torch.zeros_like(E)
    for h_idx in h_idx_list:
        for w_idx in w_idx_list:
            in_patch = img_lq[..., h_idx:h_idx + tile, w_idx:w_idx + tile]
            out_patch = net(in_patch)
            out_patch_mask = torch.ones_like(out_patch)
            E[..., h_idx * scale:(h_idx + tile) * scale, w_idx * scale:(w_idx + tile) * scale].add_(out_patch)
            W[..., h_idx * scale:(h_idx + tile) * scale, w_idx * scale:(w_idx + tile) * scale].add_(out_patch_mask)
    return E.div_(W)


class PlacementSensitiveNet(nn.Module):
    """A toy upscaler whose output depends on where a tile starts, how large it is and its content:
    nearest upscaling, plus the tile's mean, plus a ramp over the tile's own coordinates."""

    def __init__(self, scale):
        super().__init__()
        self.upscale = scale

    def forward(self, x):
        h, w = x.shape[-2:]
        out = F.interpolate(x, scale_factor=self.upscale, mode='nearest')
        ramp = torch.linspace(0, 0.1, h * self.upscale)[:, None] * torch.linspace(0, 0.1, w * self.upscale)[None]
        return (out + x.mean((-2, -1), keepdim=True)) / 2 + ramp


# LR sides under, at and over the 64 px tile; (57, 86) is Set5 "woman" at x4, (62, 90) Set14 "comic"
SIZES = [(57, 86), (62, 90), (64, 64), (64, 100), (100, 90), (40, 30), (130, 64)]


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('h,w', SIZES)
def test_tiled_forward_is_the_authors_loop_for_sides_under_at_and_over_the_tile(scale, h, w):
    torch.manual_seed(h * w + scale)
    net = PlacementSensitiveNet(scale)
    x = torch.rand(1, 3, h, w)
    torch.testing.assert_close(tiled_forward(net, x, scale, 64, 24), authors_tiled_test(net, x, scale),
                               rtol=0, atol=0)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_infer_tiles_are_the_authors_loop_too(scale):
    net = PlacementSensitiveNet(scale)
    x = torch.rand(1, 3, 57, 86)
    out = ASIDUpsampler(net, device='cpu', tile=64, tile_overlap=24).upscale_tensor(x)
    torch.testing.assert_close(out, authors_tiled_test(net, x, scale).clamp(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_a_random_asid_tiled_is_the_authors_loop(scale):
    torch.manual_seed(scale)
    net = ASID(upscale=scale, num_groups=1, num_feat=8).eval()
    x = torch.rand(1, 3, 57, 86)
    with torch.no_grad():
        torch.testing.assert_close(tiled_forward(net, x, scale, 64, 24), authors_tiled_test(net, x, scale),
                                   rtol=0, atol=1e-6)


def test_the_toy_net_tells_square_tiles_from_tiles_clipped_per_side():
    """Clipping the tile per side (64 px along the longer side) gives other numbers: the test above is not vacuous."""
    net, x = PlacementSensitiveNet(4), torch.rand(1, 3, 57, 86)
    clipped = torch.zeros(1, 3, 57 * 4, 86 * 4)
    count = torch.zeros_like(clipped)
    for left in (0, 86 - 64):
        clipped[..., left * 4:(left + 64) * 4] += net(x[..., :, left:left + 64])
        count[..., left * 4:(left + 64) * 4] += 1
    assert (tiled_forward(net, x, 4, 64, 24) - clipped / count).abs().max() > 1e-3


def test_where_the_authors_loop_is_undefined_the_overlap_is_halved_to_cover_every_pixel():
    """A 20x90 input at overlap 24: their stride 20 - 24 < 0 would leave columns uncovered (0 / 0)."""
    net, x = PlacementSensitiveNet(2), torch.rand(1, 3, 20, 90)
    out = tiled_forward(net, x, 2, 64, 24)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, authors_tiled_test(net, x, 2, 64, 10), rtol=0, atol=0)


def test_infer_tiles_strips_thinner_than_the_overlap_the_same_way():
    net = PlacementSensitiveNet(2)
    up = ASIDUpsampler(net, device='cpu', tile=64, tile_overlap=24)
    x = torch.rand(1, 3, 20, 90)
    assert up.describe_plan(20, 90) == 'tiles of 20 px, overlap 10 px (8 tiles)'
    torch.testing.assert_close(up.upscale_tensor(x), authors_tiled_test(net, x, 2, 64, 10).clamp(0, 1),
                               rtol=0, atol=0)


def test_infer_upscales_an_image_within_one_tile_whole():
    """infer's own choice (no tiling needed), unlike the tester's squares for a non-square image."""
    net = PlacementSensitiveNet(2)
    x = torch.rand(1, 3, 40, 30)
    assert ASIDUpsampler(net, device='cpu', tile=64).describe_plan(40, 30) == 'whole image'
    torch.testing.assert_close(ASIDUpsampler(net, device='cpu', tile=64).upscale_tensor(x), net(x).clamp(0, 1))

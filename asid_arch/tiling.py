"""Tiled inference: the ASID authors' evaluation protocol, and the way to upscale large images.

The image is cut into overlapping ``tile`` x ``tile`` LR tiles (the last row and column of
tiles are shifted to end at the image border), each tile is upscaled on its own, and the
outputs are averaged where they overlap. With ``tile=64, overlap=24`` this is the protocol
the ASID authors evaluated with (the same loop as SwinIR's ``test_main``).
"""
import torch


def tile_starts(size, tile, overlap):
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` overlap."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f'tile overlap ({overlap}) must be smaller than the tile size ({tile})')
    return list(range(0, size - tile, stride)) + [size - tile]


def tiled_forward(net, lq, scale, tile, overlap=0, on_tile=None):
    """Upscale ``lq`` (N, C, H, W) tile by tile with ``net`` and average the overlaps.

    Args:
        net (callable): maps an (N, C, h, w) tile to (N, C', h*scale, w*scale).
        lq (Tensor): the low-resolution batch.
        scale (int): the network's upscaling factor.
        tile (int): LR tile size; tiles are clipped to the image, so any image size works.
        overlap (int): LR pixels shared by neighbouring tiles. Default: 0.
        on_tile (callable, optional): called with no argument after each tile (progress bars).

    Returns:
        Tensor: (N, C', H*scale, W*scale), in the dtype of the network's output.
    """
    h, w = lq.shape[-2:]
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weight = None
    for top in rows:
        for left in cols:
            patch = net(lq[..., top:top + tile, left:left + tile])
            if out is None:
                out = patch.new_zeros(*patch.shape[:2], h * scale, w * scale)
                weight = patch.new_zeros(1, 1, h * scale, w * scale)
            region = (..., slice(top * scale, top * scale + patch.shape[-2]),
                      slice(left * scale, left * scale + patch.shape[-1]))
            out[region] += patch
            weight[region] += 1
            if on_tile is not None:
                on_tile()
    return out / weight

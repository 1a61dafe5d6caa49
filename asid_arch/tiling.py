"""Tiled inference: the ASID authors' evaluation protocol, and the way to upscale large images.

This is the loop of the authors' tester (``test_scripts/tester_Matlab.py`` in their
release, the same as SwinIR's ``test_main``): the tile is square, ``min(tile, h, w)`` px (as
large as the shorter side when that is under ``tile``); tiles start every ``tile - overlap``
px, the last row and column shifted to end at the image border; each tile is upscaled on its
own and the outputs are averaged where they overlap. ``tile=64, overlap=24`` is the protocol
the ASID authors evaluated with.
"""
import torch


def tile_starts(size, tile, overlap):
    """The authors' start offsets along one side: ``range(0, size - tile, tile - overlap) + [size - tile]``."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f'tile overlap ({overlap}) must be smaller than the tile size ({tile})')
    return list(range(0, size - tile, stride)) + [size - tile]


def usable_overlap(side, overlap):
    """``overlap``, or half the tile ``side`` where the authors' loop is undefined (``overlap >= side``:
    their stride would be <= 0 and leave pixels uncovered; only LR images under 25 px at overlap 24)."""
    return overlap if overlap < side else side // 2


def tile_grid(h, w, tile, overlap=0):
    """(side, overlap, row starts, column starts) of the square tiles :func:`tiled_forward` runs on h x w."""
    side = min(tile, h, w)
    overlap = usable_overlap(side, overlap)
    return side, overlap, tile_starts(h, side, overlap), tile_starts(w, side, overlap)


def tiled_forward(net, lq, scale, tile, overlap=0, on_tile=None):
    """Upscale ``lq`` (N, C, H, W) tile by tile with ``net`` and average the overlaps.

    Args:
        net (callable): maps an (N, C, h, w) tile to (N, C', h*scale, w*scale).
        lq (Tensor): the low-resolution batch.
        scale (int): the network's upscaling factor.
        tile (int): LR tile size; the tiles are ``min(tile, H, W)`` px squares, as the
            authors' tester makes them, so any image size works.
        overlap (int): LR pixels shared by neighbouring tiles. Default: 0. Halved to the tile
            side where it is not smaller (see :func:`usable_overlap`).
        on_tile (callable, optional): called with no argument after each tile (progress bars).

    Returns:
        Tensor: (N, C', H*scale, W*scale), in the dtype of the network's output.
    """
    h, w = lq.shape[-2:]
    side, _, rows, cols = tile_grid(h, w, tile, overlap)
    out = weight = None
    for top in rows:
        for left in cols:
            patch = net(lq[..., top:top + side, left:left + side])
            if out is None:
                out = patch.new_zeros(*patch.shape[:2], h * scale, w * scale)
                weight = patch.new_zeros(1, 1, h * scale, w * scale)
            region = (..., slice(top * scale, (top + side) * scale), slice(left * scale, (left + side) * scale))
            out[region] += patch
            weight[region] += 1
            if on_tile is not None:
                on_tile()
    return out / weight

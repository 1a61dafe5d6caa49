"""The Triton source of :mod:`asid_arch.kernels` (imported by ``use_fused_kernels``, not with the package).

``shared_window_attention`` and ``gated_feed_forward`` are custom ops (``torch.ops.asid.*``),
opaque to ``torch.compile``: the compiled network calls each as one kernel and Dynamo needs only
its output's shape. On a machine without a GPU the tests run it through Triton's interpreter
(``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before Triton is imported).
"""
import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _shared_window_attention_kernel(x_ptr, out_ptr, attn_ptr, norm_w_ptr, norm_b_ptr, w_v_ptr, w_o_ptr,
                                    C, grid_h, grid_w, eps,
                                    sxb, sxc, sxh, sxw, sob, soc, soh, sow, san, saq, sak,
                                    WS: tl.constexpr, CP: tl.constexpr, GRID: tl.constexpr,
                                    PRECISION: tl.constexpr):
    T: tl.constexpr = WS * WS
    n = tl.program_id(0).to(tl.int64)  # windows are ordered (b, i, j), as window_partition makes them
    # 64-bit offsets: a batch of large frames passes 2**31 elements (of the map, or of x's channels)
    b = n // (grid_h * grid_w)
    i = (n // grid_w) % grid_h
    j = n % grid_w
    tok = tl.arange(0, T)
    u, v = tok // WS, tok % WS
    if GRID:  # window (i, j) holds rows i + gh*u, cols j + gw*v
        row, col = u * grid_h + i, v * grid_w + j
    else:
        row, col = i * WS + u, j * WS + v
    ch = tl.arange(0, CP).to(tl.int64)
    cmask = ch < C
    mask = cmask[None, :] & (tok[:, None] < T)
    x_offs = b * sxb + ch[None, :] * sxc + row[:, None] * sxh + col[:, None] * sxw
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0)  # (T, CP) tokens, channels last
    dtype = x.dtype

    # LayerNorm over the channels, statistics in fp32
    xf = x.to(tl.float32)
    mean = tl.sum(xf, axis=1) / C
    diff = tl.where(mask, xf - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)
    gamma = tl.load(norm_w_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(norm_b_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    t = (diff * rstd[:, None] * gamma[None, :] + beta[None, :]).to(dtype)

    # v = to_v(t), o = attn @ v, y = to_out(o): nn.Linear weights are (out, in), read transposed
    w_offs = ch[None, :] * C + ch[:, None]
    w_mask = cmask[None, :] & cmask[:, None]
    w_v = tl.load(w_v_ptr + w_offs, mask=w_mask, other=0.0).to(dtype)
    w_o = tl.load(w_o_ptr + w_offs, mask=w_mask, other=0.0).to(dtype)
    val = tl.dot(t, w_v, input_precision=PRECISION).to(dtype)
    attn = tl.load(attn_ptr + n * san + tok[:, None] * saq + tok[None, :] * sak).to(dtype)
    o = tl.dot(attn, val, input_precision=PRECISION).to(dtype)
    y = tl.dot(o, w_o, input_precision=PRECISION).to(dtype)

    out = (xf + y.to(tl.float32)).to(dtype)
    o_offs = b * sob + ch[None, :] * soc + row[:, None] * soh + col[:, None] * sow
    tl.store(out_ptr + o_offs, out, mask=mask)


@torch.library.custom_op('asid::shared_window_attention', mutates_args=())
def shared_window_attention(x: torch.Tensor, attn: torch.Tensor, norm_weight: torch.Tensor,
                            norm_bias: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, eps: float,
                            window_size: int, grid: bool) -> torch.Tensor:
    """See :func:`asid_arch.kernels.shared_window_attention`."""
    b, c, h, w = x.shape
    grid_h, grid_w = h // window_size, w // window_size
    tokens = window_size * window_size
    if h % window_size or w % window_size or tuple(attn.shape) != (b * grid_h * grid_w, tokens, tokens):
        raise ValueError(f'shared_window_attention: input {tuple(x.shape)} is not whole windows of '
                         f'{window_size} px, or the map {tuple(attn.shape)} is not one per window')
    out = torch.empty_like(x)
    # Triton launches on the current GPU (CPU tensors: the tests' interpreter)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _shared_window_attention_kernel[(b * grid_h * grid_w, )](
            x, out, attn, norm_weight, norm_bias, w_v.contiguous(), w_o.contiguous(), c, grid_h, grid_w, eps,
            *x.stride(), *out.stride(), *attn.stride(), WS=window_size, CP=max(16, triton.next_power_of_2(c)),
            GRID=grid, PRECISION='ieee' if x.dtype == torch.float32 else 'tf32')  # fp32: no TF32
    return out


@shared_window_attention.register_fake
def _(x, attn, norm_weight, norm_bias, w_v, w_o, eps, window_size, grid):
    return torch.empty_like(x)


@triton.jit
def _gated_feed_forward_kernel(x_ptr, out_ptr, scratch_ptr, norm_w_ptr, norm_b_ptr, w_in_ptr, w_dw_ptr, w_out_ptr,
                               C, H, W, tiles_h, tiles_w, num_tiles, eps,
                               sxb, sxc, sxh, sxw, sob, soc, soh, sow,
                               TILE: tl.constexpr, HALO: tl.constexpr, CP: tl.constexpr, PRECISION: tl.constexpr):
    SIDE: tl.constexpr = TILE + 2  # the output tile and the depthwise convolution's 1-px border
    ch = tl.arange(0, CP)
    cmask = ch < C
    ch64 = ch.to(tl.int64)
    k = tl.arange(0, HALO)  # the (TILE+2)^2 pixels of the tile with its border, row-major (HALO: a power of 2 above)
    p = tl.arange(0, TILE * TILE)  # the tile's pixels, row-major
    pr, pc = p // TILE, p % TILE
    # weights, read once: 1x1 convolutions (out, in, 1, 1) read transposed; project_in's first C
    # outputs are the GELU half (a), the next C the gate (b); depthwise (2C, 1, 3, 3)
    w_offs = ch64[None, :] * C + ch64[:, None]
    w_mask = cmask[None, :] & cmask[:, None]
    gamma = tl.load(norm_w_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(norm_b_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    # this program's scratch: the tile's hidden map (2, HALO, CP), read back shifted by the 3x3 taps
    scratch = scratch_ptr + tl.program_id(0).to(tl.int64) * (2 * HALO * CP)
    s_offs = k[:, None] * CP + ch[None, :]
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):  # persistent: scratch per program
        n = tl.cast(tile, tl.int64)
        b = n // (tiles_h * tiles_w)
        row0 = (n // tiles_w) % tiles_h * TILE
        col0 = n % tiles_w * TILE
        x_base = x_ptr + b * sxb

        # channel LayerNorm (statistics in fp32) and project_in over the tile with its border
        hr, hc = row0 - 1 + k // SIDE, col0 - 1 + k % SIDE
        inside = (k < SIDE * SIDE) & (hr >= 0) & (hr < H) & (hc >= 0) & (hc < W)
        mask = inside[:, None] & cmask[None, :]
        x = tl.load(x_base + ch64[None, :] * sxc + hr[:, None] * sxh + hc[:, None] * sxw, mask=mask, other=0.0)
        dtype = x.dtype
        xf = x.to(tl.float32)
        mean = tl.sum(xf, axis=1) / C
        diff = tl.where(mask, xf - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)
        t = (diff * rstd[:, None] * gamma[None, :] + beta[None, :]).to(dtype)
        w_a = tl.load(w_in_ptr + w_offs, mask=w_mask, other=0.0).to(dtype)
        w_b = tl.load(w_in_ptr + C * C + w_offs, mask=w_mask, other=0.0).to(dtype)
        # the depthwise convolution pads the hidden map with zeros outside the image
        h_a = tl.where(inside[:, None], tl.dot(t, w_a, input_precision=PRECISION), 0.0).to(dtype)
        h_b = tl.where(inside[:, None], tl.dot(t, w_b, input_precision=PRECISION), 0.0).to(dtype)
        tl.debug_barrier()  # the previous tile's reads of the scratch are done
        tl.store(scratch + s_offs, h_a)
        tl.store(scratch + HALO * CP + s_offs, h_b)
        tl.debug_barrier()  # the whole hidden tile is written

        # depthwise 3x3 (fp32 sums of 16-bit products, rounded once), then gelu(a) * b
        acc_a = tl.zeros((TILE * TILE, CP), dtype=tl.float32)
        acc_b = tl.zeros((TILE * TILE, CP), dtype=tl.float32)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                taps = ((pr + dy) * SIDE + pc + dx)[:, None] * CP + ch[None, :]
                k_a = tl.load(w_dw_ptr + ch64 * 9 + dy * 3 + dx, mask=cmask, other=0.0).to(dtype)
                k_b = tl.load(w_dw_ptr + (ch64 + C) * 9 + dy * 3 + dx, mask=cmask, other=0.0).to(dtype)
                acc_a += tl.load(scratch + taps).to(tl.float32) * k_a.to(tl.float32)[None, :]
                acc_b += tl.load(scratch + HALO * CP + taps).to(tl.float32) * k_b.to(tl.float32)[None, :]
        a = acc_a.to(dtype).to(tl.float32)
        gate = (0.5 * a * (1.0 + tl.erf(a * 0.7071067811865476)) * acc_b.to(dtype).to(tl.float32)).to(dtype)

        # project_out and the residual
        w_o = tl.load(w_out_ptr + w_offs, mask=w_mask, other=0.0).to(dtype)
        y = tl.dot(gate, w_o, input_precision=PRECISION).to(dtype)
        orow, ocol = row0 + pr, col0 + pc
        omask = ((orow < H) & (ocol < W))[:, None] & cmask[None, :]
        xo = tl.load(x_base + ch64[None, :] * sxc + orow[:, None] * sxh + ocol[:, None] * sxw, mask=omask, other=0.0)
        out = (xo.to(tl.float32) + y.to(tl.float32)).to(dtype)
        tl.store(out_ptr + b * sob + ch64[None, :] * soc + orow[:, None] * soh + ocol[:, None] * sow, out, mask=omask)


#: Output tile side of ``gated_feed_forward``: 8x8 pixels, computed from a 10x10 neighbourhood
FEED_FORWARD_TILE = 8
#: Programs of ``gated_feed_forward`` per streaming multiprocessor (each loops over tiles, reusing its scratch)
PROGRAMS_PER_SM = 4


@torch.library.custom_op('asid::gated_feed_forward', mutates_args=())
def gated_feed_forward(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, w_in: torch.Tensor,
                       w_dw: torch.Tensor, w_out: torch.Tensor, eps: float) -> torch.Tensor:
    """See :func:`asid_arch.kernels.gated_feed_forward`."""
    b, c, h, w = x.shape
    if tuple(w_in.shape) != (2 * c, c, 1, 1) or tuple(w_dw.shape) != (2 * c, 1, 3, 3) or tuple(w_out.shape) != (c, c, 1, 1):
        raise ValueError(f'gated_feed_forward: weights {tuple(w_in.shape)}, {tuple(w_dw.shape)}, {tuple(w_out.shape)} '
                         f'are not a gated feed-forward of {c} channels')
    tile = FEED_FORWARD_TILE
    tiles_h, tiles_w = -(-h // tile), -(-w // tile)
    num_tiles = b * tiles_h * tiles_w
    cp = max(16, triton.next_power_of_2(c))
    halo = triton.next_power_of_2((tile + 2)**2)
    if x.is_cuda:
        programs = min(num_tiles, torch.cuda.get_device_properties(x.device).multi_processor_count * PROGRAMS_PER_SM)
    else:  # the interpreter runs programs one after another
        programs = min(num_tiles, 8)
    out = torch.empty_like(x)
    scratch = torch.empty(programs, 2, halo, cp, device=x.device, dtype=x.dtype)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _gated_feed_forward_kernel[(programs, )](
            x, out, scratch, norm_weight, norm_bias, w_in.contiguous(), w_dw.contiguous(), w_out.contiguous(),
            c, h, w, tiles_h, tiles_w, num_tiles, eps, *x.stride(), *out.stride(),
            TILE=tile, HALO=halo, CP=cp, PRECISION='ieee' if x.dtype == torch.float32 else 'tf32')
    return out


@gated_feed_forward.register_fake
def _(x, norm_weight, norm_bias, w_in, w_dw, w_out, eps):
    return torch.empty_like(x)

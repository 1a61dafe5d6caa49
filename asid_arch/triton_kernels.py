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


# The feed-forward's tiles are channels x pixels, pixels along a row of the NCHW map the contiguous
# axis (coalesced loads and stores); 1x1 convolutions are then weight (out, in) @ tile.
@triton.jit
def _norm_project_in_kernel(x_ptr, hidden_ptr, norm_w_ptr, norm_b_ptr, w_in_ptr, C, H, W, eps,
                            sxb, sxc, sxh, sxw, BLOCK: tl.constexpr, CP: tl.constexpr, PRECISION: tl.constexpr):
    """hidden = project_in(cnorm(x)) for BLOCK pixels of one image; hidden is (B, 2C, H, W) contiguous."""
    b = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row, col = pix // W, pix % W
    ch = tl.arange(0, CP)
    cmask = ch < C
    ch64 = ch.to(tl.int64)
    mask = cmask[:, None] & (pix < H * W)[None, :]
    x = tl.load(x_ptr + b * sxb + ch64[:, None] * sxc + row[None, :] * sxh + col[None, :] * sxw, mask=mask, other=0.0)
    dtype = x.dtype
    xf = x.to(tl.float32)
    mean = tl.sum(xf, axis=0) / C
    diff = tl.where(mask, xf - mean[None, :], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=0) / C + eps)
    gamma = tl.load(norm_w_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(norm_b_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    t = (diff * rstd[None, :] * gamma[:, None] + beta[:, None]).to(dtype)
    # project_in (2C, C, 1, 1): the first C outputs are the GELU half, the next C the gate
    w_offs = ch64[:, None] * C + ch64[None, :]
    w_mask = cmask[:, None] & cmask[None, :]
    h_offs = b * 2 * C * H * W + ch64[:, None] * H * W + pix[None, :]
    for half in tl.static_range(2):
        w = tl.load(w_in_ptr + half * C * C + w_offs, mask=w_mask, other=0.0).to(dtype)
        h = tl.dot(w, t, input_precision=PRECISION).to(dtype)
        tl.store(hidden_ptr + half * C * H * W + h_offs, h, mask=mask)


@triton.jit
def _gate_project_out_kernel(x_ptr, hidden_ptr, out_ptr, w_dw_ptr, w_out_ptr, C, H, W,
                             sxb, sxc, sxh, sxw, sob, soc, soh, sow,
                             ROWS: tl.constexpr, COLS: tl.constexpr, CP: tl.constexpr, PRECISION: tl.constexpr):
    """out = x + project_out(gelu(a) * b), (a, b) = dwconv(hidden), for a ROWS x COLS tile of one image."""
    b = tl.program_id(2).to(tl.int64)
    p = tl.arange(0, ROWS * COLS)
    row = tl.program_id(1) * ROWS + p // COLS
    col = tl.program_id(0) * COLS + p % COLS
    ch = tl.arange(0, CP)
    cmask = ch < C
    ch64 = ch.to(tl.int64)
    h_base = hidden_ptr + b * 2 * C * H * W
    acc_a = tl.zeros((CP, ROWS * COLS), dtype=tl.float32)
    acc_b = tl.zeros((CP, ROWS * COLS), dtype=tl.float32)
    for dy in tl.static_range(3):
        for dx in tl.static_range(3):
            r, c = row + dy - 1, col + dx - 1  # zeros outside the image, as the convolution pads
            m = cmask[:, None] & ((r >= 0) & (r < H) & (c >= 0) & (c < W))[None, :]
            offs = ch64[:, None] * H * W + (r * W + c)[None, :]
            k_a = tl.load(w_dw_ptr + ch64 * 9 + dy * 3 + dx, mask=cmask, other=0.0).to(tl.float32)
            k_b = tl.load(w_dw_ptr + (ch64 + C) * 9 + dy * 3 + dx, mask=cmask, other=0.0).to(tl.float32)
            acc_a += tl.load(h_base + offs, mask=m, other=0.0).to(tl.float32) * k_a[:, None]
            acc_b += tl.load(h_base + C * H * W + offs, mask=m, other=0.0).to(tl.float32) * k_b[:, None]
    dtype = x_ptr.dtype.element_ty
    a = acc_a.to(dtype).to(tl.float32)  # the depthwise convolution's output, rounded as the plain path's
    gate = (0.5 * a * (1.0 + tl.erf(a * 0.7071067811865476)) * acc_b.to(dtype).to(tl.float32)).to(dtype)
    w_o = tl.load(w_out_ptr + ch64[:, None] * C + ch64[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
    y = tl.dot(w_o.to(dtype), gate, input_precision=PRECISION).to(dtype)
    mask = cmask[:, None] & ((row < H) & (col < W))[None, :]
    x = tl.load(x_ptr + b * sxb + ch64[:, None] * sxc + row[None, :] * sxh + col[None, :] * sxw, mask=mask, other=0.0)
    out = (x.to(tl.float32) + y.to(tl.float32)).to(dtype)
    tl.store(out_ptr + b * sob + ch64[:, None] * soc + row[None, :] * soh + col[None, :] * sow, out, mask=mask)


#: Launch shapes of ``gated_feed_forward``: pixels a program of the first kernel normalises and
#: projects, and the output tile (rows, cols) of the second
FEED_FORWARD_CONFIG = dict(block=128, rows=1, cols=64, warps_in=4, warps_out=4)


def launch_gated_feed_forward(x, norm_weight, norm_bias, w_in, w_dw, w_out, eps, block, rows, cols, warps_in, warps_out):
    """The two kernels of ``gated_feed_forward`` with the given launch shapes (the op uses
    :data:`FEED_FORWARD_CONFIG`; other shapes for measuring them)."""
    b, c, h, w = x.shape
    if tuple(w_in.shape) != (2 * c, c, 1, 1) or tuple(w_dw.shape) != (2 * c, 1, 3, 3) or tuple(w_out.shape) != (c, c, 1, 1):
        raise ValueError(f'gated_feed_forward: weights {tuple(w_in.shape)}, {tuple(w_dw.shape)}, {tuple(w_out.shape)} '
                         f'are not a gated feed-forward of {c} channels')
    cp = max(16, triton.next_power_of_2(c))
    precision = 'ieee' if x.dtype == torch.float32 else 'tf32'
    hidden = torch.empty(b, 2 * c, h, w, device=x.device, dtype=x.dtype)
    out = torch.empty_like(x)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _norm_project_in_kernel[(triton.cdiv(h * w, block), b)](
            x, hidden, norm_weight, norm_bias, w_in.contiguous(), c, h, w, eps, *x.stride(),
            BLOCK=block, CP=cp, PRECISION=precision, num_warps=warps_in)
        _gate_project_out_kernel[(triton.cdiv(w, cols), triton.cdiv(h, rows), b)](
            x, hidden, out, w_dw.contiguous(), w_out.contiguous(), c, h, w, *x.stride(), *out.stride(),
            ROWS=rows, COLS=cols, CP=cp, PRECISION=precision, num_warps=warps_out)
    return out


@torch.library.custom_op('asid::gated_feed_forward', mutates_args=())
def gated_feed_forward(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, w_in: torch.Tensor,
                       w_dw: torch.Tensor, w_out: torch.Tensor, eps: float) -> torch.Tensor:
    """See :func:`asid_arch.kernels.gated_feed_forward`."""
    return launch_gated_feed_forward(x, norm_weight, norm_bias, w_in, w_dw, w_out, eps, **FEED_FORWARD_CONFIG)


@gated_feed_forward.register_fake
def _(x, norm_weight, norm_bias, w_in, w_dw, w_out, eps):
    return torch.empty_like(x)

"""The Triton source of :mod:`asid_arch.kernels` (imported by ``use_fused_kernels``, not with the package).

``shared_window_attention`` is a custom op (``torch.ops.asid.shared_window_attention``), opaque
to ``torch.compile``: the compiled network calls it as one kernel and Dynamo needs only its
output's shape. On a machine without a GPU the tests run it through Triton's interpreter
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

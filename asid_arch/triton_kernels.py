"""The Triton source of :mod:`asid_arch.kernels` (imported by ``use_fused_kernels``, not with the package).

One kernel, ``_window_attention_kernel``, serves both kinds of SLA/SGA layer (``SHARE``: apply
a given map, or compute it), behind two custom ops (``torch.ops.asid.window_attention`` and
``torch.ops.asid.shared_window_attention``) opaque to ``torch.compile``: the compiled network
calls each as one kernel and Dynamo needs only their outputs' shapes. On a machine without a
GPU the tests run it through Triton's interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py`` before Triton is imported).
"""
import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _window_attention_kernel(x_ptr, out_ptr, attn_ptr, norm_w_ptr, norm_b_ptr, w_qkv_ptr, w_o_ptr, table_ptr,
                             C, grid_h, grid_w, eps, scale,
                             sxb, sxc, sxh, sxw, sob, soc, soh, sow, san, saq, sak,
                             WS: tl.constexpr, CP: tl.constexpr, GRID: tl.constexpr, SHARE: tl.constexpr,
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

    # nn.Linear weights are (out, in), read transposed; to_qkv's rows are q, k, v in turn
    w_offs = ch[None, :] * C + ch[:, None]
    w_mask = cmask[None, :] & cmask[:, None]
    w_v = tl.load(w_qkv_ptr + (0 if SHARE else 2 * C * C) + w_offs, mask=w_mask, other=0.0).to(dtype)
    val = tl.dot(t, w_v, input_precision=PRECISION).to(dtype)
    attn_offs = n * san + tok[:, None] * saq + tok[None, :] * sak
    if SHARE:  # the map of an attention-computing layer
        attn = tl.load(attn_ptr + attn_offs).to(dtype)
    else:  # softmax(q k^T * scale + relative-position bias) over the keys, in fp32, stored in x's dtype
        w_q = tl.load(w_qkv_ptr + w_offs, mask=w_mask, other=0.0).to(dtype)
        w_k = tl.load(w_qkv_ptr + C * C + w_offs, mask=w_mask, other=0.0).to(dtype)
        q = tl.dot(t, w_q, input_precision=PRECISION).to(dtype)
        k = tl.dot(t, w_k, input_precision=PRECISION).to(dtype)
        du, dv = u[:, None] - u[None, :] + WS - 1, v[:, None] - v[None, :] + WS - 1
        # relative_position_index; the bias is added in fp32 (the plain layer rounds it to the dtype first)
        bias = tl.load(table_ptr + du * (2 * WS - 1) + dv).to(tl.float32)
        sim = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + bias).to(dtype).to(tl.float32)
        e = tl.exp(sim - tl.max(sim, axis=1)[:, None])
        attn = (e / tl.sum(e, axis=1)[:, None]).to(dtype)
        tl.store(attn_ptr + attn_offs, attn)
    w_o = tl.load(w_o_ptr + w_offs, mask=w_mask, other=0.0).to(dtype)
    o = tl.dot(attn, val, input_precision=PRECISION).to(dtype)
    y = tl.dot(o, w_o, input_precision=PRECISION).to(dtype)

    out = (xf + y.to(tl.float32)).to(dtype)
    o_offs = b * sob + ch[None, :] * soc + row[:, None] * soh + col[:, None] * sow
    tl.store(out_ptr + o_offs, out, mask=mask)


def _launch(x, attn, norm_weight, norm_bias, w_qkv, w_o, table, eps, scale, window_size, grid, share):
    """Check the shapes, run the kernel, return its output map (``attn`` is read, or written)."""
    b, c, h, w = x.shape
    grid_h, grid_w = h // window_size, w // window_size
    tokens = window_size * window_size
    if h % window_size or w % window_size or tuple(attn.shape) != (b * grid_h * grid_w, tokens, tokens):
        raise ValueError(f'window_attention: input {tuple(x.shape)} is not whole windows of '
                         f'{window_size} px, or the map {tuple(attn.shape)} is not one per window')
    out = torch.empty_like(x)
    # Triton launches on the current GPU (CPU tensors: the tests' interpreter)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _window_attention_kernel[(b * grid_h * grid_w, )](
            x, out, attn, norm_weight, norm_bias, w_qkv.contiguous(), w_o.contiguous(), table, c, grid_h, grid_w,
            eps, scale, *x.stride(), *out.stride(), *attn.stride(), WS=window_size,
            CP=max(16, triton.next_power_of_2(c)), GRID=grid, SHARE=share,
            PRECISION='ieee' if x.dtype == torch.float32 else 'tf32')  # fp32: no TF32
    return out


def _new_map(x, window_size):
    b, _, h, w = x.shape
    return x.new_empty(b * (h // window_size) * (w // window_size), window_size**2, window_size**2)


@torch.library.custom_op('asid::window_attention', mutates_args=())
def window_attention(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, w_qkv: torch.Tensor,
                     w_o: torch.Tensor, table: torch.Tensor, eps: float, scale: float, window_size: int,
                     grid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`asid_arch.kernels.window_attention`."""
    attn = _new_map(x, window_size)
    out = _launch(x, attn, norm_weight, norm_bias, w_qkv, w_o, table.contiguous(), eps, scale, window_size, grid,
                  share=False)
    return out, attn


@window_attention.register_fake
def _(x, norm_weight, norm_bias, w_qkv, w_o, table, eps, scale, window_size, grid):
    return torch.empty_like(x), _new_map(x, window_size)


@torch.library.custom_op('asid::shared_window_attention', mutates_args=())
def shared_window_attention(x: torch.Tensor, attn: torch.Tensor, norm_weight: torch.Tensor,
                            norm_bias: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, eps: float,
                            window_size: int, grid: bool) -> torch.Tensor:
    """See :func:`asid_arch.kernels.shared_window_attention`."""
    # the table is not read when sharing: w_v stands in for the pointer
    return _launch(x, attn, norm_weight, norm_bias, w_v, w_o, w_v, eps, 1.0, window_size, grid, share=True)


@shared_window_attention.register_fake
def _(x, attn, norm_weight, norm_bias, w_v, w_o, eps, window_size, grid):
    return torch.empty_like(x)

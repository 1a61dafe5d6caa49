"""The Triton source of :mod:`asid_arch.kernels` (imported by ``use_fused_kernels``, not with the package).

Two kernels, one program per window: ``_window_attention_kernel`` (the forward) and
``_window_attention_backward_kernel``, each serving both kinds of SLA/SGA layer (``SHARE``:
apply a given map, or compute it). They share the forward's math (:func:`_forward_in_window`),
which the backward recomputes from the layer's input instead of saving its intermediates.
Four custom ops wrap them (``torch.ops.asid.window_attention``, ``shared_window_attention`` and
their ``*_backward``), opaque to ``torch.compile``: a compiled network calls each as one kernel,
and AOTAutograd puts the backward op into the compiled backward. On a machine without a GPU the
tests run them through Triton's interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``
before Triton is imported).
"""
import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

#: Triton's names of the dtypes the kernels compute in.
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _window_tile(n, grid_h, grid_w, C, WS: tl.constexpr, CP: tl.constexpr, GRID: tl.constexpr):
    """Window ``n``'s (T, CP) tile of a map: its image index, the row and column of each of its w*w
    tokens (windows ordered (b, i, j), tokens row-major, as ``window_partition`` makes them), the
    token and channel indices and the mask of the C real channels."""
    b = n // (grid_h * grid_w)
    i = (n // grid_w) % grid_h
    j = n % grid_w
    tok = tl.arange(0, WS * WS)
    u, v = tok // WS, tok % WS
    if GRID:  # window (i, j) holds rows i + gh*u, cols j + gw*v
        row, col = u * grid_h + i, v * grid_w + j
    else:
        row, col = i * WS + u, j * WS + v
    ch = tl.arange(0, CP).to(tl.int64)
    cmask = ch < C
    mask = cmask[None, :] & (tok[:, None] < WS * WS)
    return b, row, col, tok, ch, cmask, mask


@triton.jit
def _tile_offsets(b, row, col, ch, stride_b, stride_c, stride_h, stride_w):
    """Element offsets of a window's tile in a (B, C, H, W) map of the given strides (NCHW or channels-last)."""
    return b * stride_b + ch[None, :] * stride_c + row[:, None] * stride_h + col[:, None] * stride_w


@triton.jit
def _forward_in_window(x, mask, C, eps, scale, attn, norm_w_ptr, norm_b_ptr, w_qkv_ptr, table_ptr,
                       WS: tl.constexpr, CP: tl.constexpr, SHARE: tl.constexpr, PRECISION: tl.constexpr,
                       DTYPE: tl.constexpr):
    """The attention half of an SLA/SGA layer up to ``a @ v``, for one window's (T, CP) tokens ``x``.

    Returns the normalised tokens (``xhat`` in fp32, before the affine; ``t`` in DTYPE), ``rstd``,
    ``q, k, v``, the softmax in fp32 (computing layers; sharing ones: ``attn``) and the map in DTYPE.
    The roundings are the plain layer's under autocast: LayerNorm in fp32, the products in DTYPE.
    """
    T: tl.constexpr = WS * WS
    tok = tl.arange(0, T)
    ch = tl.arange(0, CP)
    cmask = ch < C
    xf = x.to(tl.float32)
    mean = tl.sum(xf, axis=1) / C
    diff = tl.where(mask, xf - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)
    xhat = diff * rstd[:, None]
    gamma = tl.load(norm_w_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(norm_b_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    t = (xhat * gamma[None, :] + beta[None, :]).to(DTYPE)
    # nn.Linear weights are (out, in), read transposed; to_qkv's rows are q, k, v in turn
    w_offs = ch[None, :] * C + ch[:, None]
    w_mask = cmask[None, :] & cmask[:, None]
    w_v = tl.load(w_qkv_ptr + (0 if SHARE else 2 * C * C) + w_offs, mask=w_mask, other=0.0).to(DTYPE)
    val = tl.dot(t, w_v, input_precision=PRECISION).to(DTYPE)
    if SHARE:
        q = val  # unused
        k = val
        p = attn.to(tl.float32)
    else:  # softmax(q k^T * scale + relative-position bias) over the keys, in fp32
        w_q = tl.load(w_qkv_ptr + w_offs, mask=w_mask, other=0.0).to(DTYPE)
        w_k = tl.load(w_qkv_ptr + C * C + w_offs, mask=w_mask, other=0.0).to(DTYPE)
        q = tl.dot(t, w_q, input_precision=PRECISION).to(DTYPE)
        k = tl.dot(t, w_k, input_precision=PRECISION).to(DTYPE)
        u, v = tok // WS, tok % WS
        du, dv = u[:, None] - u[None, :] + WS - 1, v[:, None] - v[None, :] + WS - 1
        # relative_position_index; the bias is added in fp32 (the plain layer rounds it to the dtype first)
        bias = tl.load(table_ptr + du * (2 * WS - 1) + dv).to(tl.float32)
        sim = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + bias).to(DTYPE).to(tl.float32)
        e = tl.exp(sim - tl.max(sim, axis=1)[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
    return xhat, t, rstd, gamma, q, k, val, p, p.to(DTYPE)


@triton.jit
def _window_attention_kernel(x_ptr, out_ptr, attn_ptr, norm_w_ptr, norm_b_ptr, w_qkv_ptr, w_o_ptr, table_ptr,
                             C, grid_h, grid_w, eps, scale,
                             sxb, sxc, sxh, sxw, sob, soc, soh, sow, san, saq, sak,
                             WS: tl.constexpr, CP: tl.constexpr, GRID: tl.constexpr, SHARE: tl.constexpr,
                             PRECISION: tl.constexpr, DTYPE: tl.constexpr):
    # 64-bit offsets: a batch of large frames passes 2**31 elements (of the map, or of x's channels)
    n = tl.program_id(0).to(tl.int64)
    b, row, col, tok, ch, cmask, mask = _window_tile(n, grid_h, grid_w, C, WS, CP, GRID)
    # (T, CP) tokens, channels last
    x = tl.load(x_ptr + _tile_offsets(b, row, col, ch, sxb, sxc, sxh, sxw), mask=mask, other=0.0)
    attn_offs = n * san + tok[:, None] * saq + tok[None, :] * sak
    if SHARE:  # the map of an attention-computing layer
        attn = tl.load(attn_ptr + attn_offs)
    else:
        attn = 0.0
    _, _, _, _, _, _, val, _, attn = _forward_in_window(x, mask, C, eps, scale, attn, norm_w_ptr, norm_b_ptr,
                                                        w_qkv_ptr, table_ptr, WS, CP, SHARE, PRECISION, DTYPE)
    if not SHARE:
        tl.store(attn_ptr + attn_offs, attn)
    w_o = tl.load(w_o_ptr + ch[None, :] * C + ch[:, None], mask=cmask[None, :] & cmask[:, None],
                  other=0.0).to(DTYPE)
    o = tl.dot(attn, val, input_precision=PRECISION).to(DTYPE)
    y = tl.dot(o, w_o, input_precision=PRECISION).to(DTYPE)
    out = (x.to(tl.float32) + y.to(tl.float32)).to(x.dtype)  # the residual in x's dtype
    tl.store(out_ptr + _tile_offsets(b, row, col, ch, sob, soc, soh, sow), out, mask=mask)


@triton.jit
def _store_matrix(ptr, m, C, CP: tl.constexpr):
    """Store the C x C corner of a (CP, CP) fp32 matrix, row-major."""
    ch = tl.arange(0, CP)
    tl.store(ptr + ch[:, None] * C + ch[None, :], m, mask=(ch[:, None] < C) & (ch[None, :] < C))


@triton.jit
def _window_attention_backward_kernel(x_ptr, grad_ptr, dx_ptr, attn_ptr, dattn_ptr, part_ptr,
                                      norm_w_ptr, norm_b_ptr, w_qkv_ptr, w_o_ptr, table_ptr,
                                      C, grid_h, grid_w, eps, scale, part_row,
                                      sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw, sdb, sdc, sdh, sdw,
                                      san, saq, sak, sdan, sdaq, sdak,
                                      WS: tl.constexpr, CP: tl.constexpr, GRID: tl.constexpr, SHARE: tl.constexpr,
                                      HAS_DATTN: tl.constexpr, PRECISION: tl.constexpr, DTYPE: tl.constexpr):
    """Gradients of one window: ``dx`` in place of the window's pixels, the shared map's gradient
    (sharing layers), and this window's share of the weights' gradients, written to its row of
    ``part`` (``part_row`` floats; summed over windows by the caller): computing layers ``[to_qkv |
    to_out | norm weight | norm bias | bias table]``, sharing layers ``[to_v | to_out | norm weight |
    norm bias]``."""
    T: tl.constexpr = WS * WS
    n = tl.program_id(0).to(tl.int64)
    b, row, col, tok, ch, cmask, mask = _window_tile(n, grid_h, grid_w, C, WS, CP, GRID)
    x = tl.load(x_ptr + _tile_offsets(b, row, col, ch, sxb, sxc, sxh, sxw), mask=mask, other=0.0)
    if SHARE:
        attn = tl.load(attn_ptr + n * san + tok[:, None] * saq + tok[None, :] * sak)
    else:
        attn = 0.0
    xhat, t, rstd, gamma, q, k, val, p, attn = _forward_in_window(
        x, mask, C, eps, scale, attn, norm_w_ptr, norm_b_ptr, w_qkv_ptr, table_ptr, WS, CP, SHARE, PRECISION, DTYPE)
    o = tl.dot(attn, val, input_precision=PRECISION).to(DTYPE)

    # the output's gradient, also the residual's
    g = tl.load(grad_ptr + _tile_offsets(b, row, col, ch, sgb, sgc, sgh, sgw), mask=mask, other=0.0).to(tl.float32)
    dy = g.to(DTYPE)
    w_rows = ch[:, None] * C + ch[None, :]  # a weight as it is stored, (out, in)
    w_mask = cmask[:, None] & cmask[None, :]
    part = part_ptr + n * part_row
    O_OFF = C * C if SHARE else 3 * C * C  # where to_out's gradient starts in the row
    _store_matrix(part + O_OFF, tl.dot(tl.trans(dy), o, input_precision=PRECISION), C, CP)
    w_o = tl.load(w_o_ptr + w_rows, mask=w_mask, other=0.0).to(DTYPE)
    do = tl.dot(dy, w_o, input_precision=PRECISION).to(DTYPE)
    dattn = tl.dot(do, tl.trans(val), input_precision=PRECISION).to(DTYPE)
    dval = tl.dot(tl.trans(attn), do, input_precision=PRECISION).to(DTYPE)
    w_v = tl.load(w_qkv_ptr + (0 if SHARE else 2 * C * C) + w_rows, mask=w_mask, other=0.0).to(DTYPE)
    dt = tl.dot(dval, w_v, input_precision=PRECISION)
    _store_matrix(part + (0 if SHARE else 2 * C * C), tl.dot(tl.trans(dval), t, input_precision=PRECISION), C, CP)
    if SHARE:
        tl.store(dattn_ptr + n * sdan + tok[:, None] * sdaq + tok[None, :] * sdak, dattn)
    else:  # back through the softmax (fp32) to the logits, rounded to DTYPE as the plain layer's gradient is
        da = dattn.to(tl.float32)
        if HAS_DATTN:  # the map's own gradient, from the layers that share it
            da += tl.load(dattn_ptr + n * sdan + tok[:, None] * sdaq + tok[None, :] * sdak).to(tl.float32)
        ds = (p * (da - tl.sum(da * p, axis=1)[:, None])).to(DTYPE)
        dq = (tl.dot(ds, k, input_precision=PRECISION) * scale).to(DTYPE)
        dk = (tl.dot(tl.trans(ds), q, input_precision=PRECISION) * scale).to(DTYPE)
        w_q = tl.load(w_qkv_ptr + w_rows, mask=w_mask, other=0.0).to(DTYPE)
        w_k = tl.load(w_qkv_ptr + C * C + w_rows, mask=w_mask, other=0.0).to(DTYPE)
        dt += tl.dot(dq, w_q, input_precision=PRECISION) + tl.dot(dk, w_k, input_precision=PRECISION)
        _store_matrix(part, tl.dot(tl.trans(dq), t, input_precision=PRECISION), C, CP)
        _store_matrix(part + C * C, tl.dot(tl.trans(dk), t, input_precision=PRECISION), C, CP)
        # the bias table's gradient: ds summed over the token pairs of each offset (du, dv), as
        # E_u @ ds' @ E_v^T with ds' = ds indexed [(u1, u2), (v1, v2)] and E one-hot offset matrices
        R: tl.constexpr = 2 * WS - 1
        RP: tl.constexpr = 16 if R <= 16 else 32 if R <= 32 else 64
        pairs = tl.reshape(tl.permute(tl.reshape(ds.to(tl.float32), (WS, WS, WS, WS)), (0, 2, 1, 3)), (T, T))
        r = tl.arange(0, RP)
        one_hot = ((tok[None, :] // WS - tok[None, :] % WS + WS - 1) == r[:, None]).to(tl.float32)  # (RP, T)
        table = tl.dot(tl.dot(one_hot, pairs, input_precision='ieee'), tl.trans(one_hot), input_precision='ieee')
        tl.store(part + 4 * C * C + 2 * C + r[:, None] * R + r[None, :], table,
                 mask=(r[:, None] < R) & (r[None, :] < R))

    # back through the LayerNorm (statistics in fp32); the gradient of t is rounded as the plain layer's
    dt = dt.to(DTYPE).to(tl.float32)
    norm_part = part + O_OFF + C * C
    tl.store(norm_part + ch, tl.sum(dt * xhat, axis=0), mask=cmask)
    tl.store(norm_part + C + ch, tl.sum(dt, axis=0), mask=cmask)
    dxhat = dt * gamma[None, :]
    dx = rstd[:, None] * (dxhat - tl.sum(dxhat, axis=1)[:, None] / C
                          - xhat * (tl.sum(dxhat * xhat, axis=1) / C)[:, None])
    dx = (g + dx).to(x.dtype)
    tl.store(dx_ptr + _tile_offsets(b, row, col, ch, sdb, sdc, sdh, sdw), dx, mask=mask)


def _check(x, attn, window_size):
    """The window count and grid of ``x``; ValueError unless it is whole windows and ``attn`` (if
    given) one map per window."""
    b, c, h, w = x.shape
    tokens = window_size * window_size
    windows = b * (h // window_size) * (w // window_size)
    if h % window_size or w % window_size:
        raise ValueError(f'window_attention: input {tuple(x.shape)} is not whole windows of {window_size} px')
    if attn is not None and tuple(attn.shape) != (windows, tokens, tokens):
        raise ValueError(f'window_attention: the map {tuple(attn.shape)} is not one ({tokens}, {tokens}) map '
                         f'for each of the {windows} windows of input {tuple(x.shape)}')
    return windows, h // window_size, w // window_size


def _map_args(attn, stand_in):
    """A map's pointer and strides for a kernel; a map the kernel does not read (None): ``stand_in``'s pointer."""
    return (stand_in, 0, 0, 0) if attn is None else (attn, *attn.stride())


def _constants(x, window_size, grid, share, dtype):
    return dict(WS=window_size, CP=max(16, triton.next_power_of_2(x.shape[1])), GRID=grid, SHARE=share,
                PRECISION='ieee' if dtype == torch.float32 else 'tf32', DTYPE=_TL_DTYPES[dtype])  # fp32: no TF32


def _device(x):
    """Triton launches on the current GPU (CPU tensors: the tests' interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _launch(x, attn, norm_weight, norm_bias, w_qkv, w_o, table, eps, scale, window_size, grid, share, dtype):
    """Check the shapes, run the forward kernel, return its output map (``attn`` is read, or written)."""
    windows, grid_h, grid_w = _check(x, attn, window_size)
    out = torch.empty_like(x)
    with _device(x):
        _window_attention_kernel[(windows, )](
            x, out, attn, norm_weight, norm_bias, w_qkv.contiguous(), w_o.contiguous(), table, x.shape[1], grid_h,
            grid_w, eps, scale, *x.stride(), *out.stride(), *attn.stride(),
            **_constants(x, window_size, grid, share, dtype))
    return out


def _launch_backward(grad, grad_attn, x, attn, norm_weight, norm_bias, w_qkv, w_o, table, eps, scale, window_size,
                     grid, share, dtype):
    """Run the backward kernel (``attn``: the shared map of a sharing layer; a computing layer's is
    recomputed, None); returns ``dx``, the shared map's gradient (sharing layers, else None) and the
    weights' gradients, summed over the windows (in fp32)."""
    windows, grid_h, grid_w = _check(x, attn, window_size)
    c = x.shape[1]
    sizes = [c * c] * (2 if share else 4) + [c, c] + ([] if share else [(2 * window_size - 1)**2])
    part = torch.empty(windows, sum(sizes), device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x)
    dattn = torch.empty_like(attn) if share else grad_attn
    attn_ptr, *attn_strides = _map_args(attn, x)
    dattn_ptr, *dattn_strides = _map_args(dattn, x)
    with _device(x):
        _window_attention_backward_kernel[(windows, )](
            x, grad, dx, attn_ptr, dattn_ptr, part, norm_weight, norm_bias, w_qkv.contiguous(), w_o.contiguous(),
            table, c, grid_h, grid_w, eps, scale, part.stride(0), *x.stride(), *grad.stride(), *dx.stride(),
            *attn_strides, *dattn_strides, HAS_DATTN=dattn is not None,
            **_constants(x, window_size, grid, share, dtype))
    # one reduction for all the weights; each returned apart (a custom op's outputs may not alias)
    weights = part.sum(0).split(sizes)
    return dx, dattn if share else None, weights


def _new_map(x, window_size, dtype):
    b, _, h, w = x.shape
    return x.new_empty(b * (h // window_size) * (w // window_size), window_size**2, window_size**2, dtype=dtype)


@torch.library.custom_op('asid::window_attention', mutates_args=())
def window_attention(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, w_qkv: torch.Tensor,
                     w_o: torch.Tensor, table: torch.Tensor, eps: float, scale: float, window_size: int,
                     grid: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`asid_arch.kernels.window_attention`."""
    attn = _new_map(x, window_size, dtype)
    out = _launch(x, attn, norm_weight, norm_bias, w_qkv, w_o, table.contiguous(), eps, scale, window_size, grid,
                  share=False, dtype=dtype)
    return out, attn


@window_attention.register_fake
def _(x, norm_weight, norm_bias, w_qkv, w_o, table, eps, scale, window_size, grid, dtype):
    return torch.empty_like(x), _new_map(x, window_size, dtype)


@torch.library.custom_op('asid::window_attention_backward', mutates_args=())
def window_attention_backward(grad: torch.Tensor, grad_attn: Optional[torch.Tensor], x: torch.Tensor,
                              norm_weight: torch.Tensor, norm_bias: torch.Tensor, w_qkv: torch.Tensor,
                              w_o: torch.Tensor, table: torch.Tensor, eps: float, scale: float, window_size: int,
                              grid: bool, dtype: torch.dtype) -> list[torch.Tensor]:
    """Gradients of ``asid::window_attention``: x, norm weight, norm bias, to_qkv, to_out, bias table."""
    dx, _, (d_q, d_k, d_v, d_o, d_gamma, d_beta, d_table) = _launch_backward(
        grad, grad_attn, x, None, norm_weight, norm_bias, w_qkv, w_o, table.contiguous(), eps, scale, window_size,
        grid, share=False, dtype=dtype)
    d_qkv = torch.cat([d_q, d_k, d_v]).view_as(w_qkv)
    return [dx] + [g.view_as(w).to(w.dtype, copy=True) for g, w in ((d_gamma, norm_weight), (d_beta, norm_bias),
                                                                    (d_qkv, w_qkv), (d_o, w_o), (d_table, table))]


@window_attention_backward.register_fake
def _(grad, grad_attn, x, norm_weight, norm_bias, w_qkv, w_o, table, eps, scale, window_size, grid, dtype):
    return [torch.empty_like(x)] + [torch.empty_like(w) for w in (norm_weight, norm_bias, w_qkv, w_o, table)]


def _window_attention_context(ctx, inputs, output):
    x, norm_weight, norm_bias, w_qkv, w_o, table, eps, scale, window_size, grid, dtype = inputs
    ctx.save_for_backward(x, norm_weight, norm_bias, w_qkv, w_o, table)
    ctx.constants = eps, scale, window_size, grid, dtype
    ctx.set_materialize_grads(False)  # a map no layer shares has no gradient: None, not a map of zeros to read


def _window_attention_grad(ctx, grad, grad_attn):
    x = ctx.saved_tensors[0]
    grad = torch.zeros_like(x) if grad is None else grad
    grads = window_attention_backward(grad, grad_attn, *ctx.saved_tensors, *ctx.constants)
    return (*grads, None, None, None, None, None)


window_attention.register_autograd(_window_attention_grad, setup_context=_window_attention_context)


@torch.library.custom_op('asid::shared_window_attention', mutates_args=())
def shared_window_attention(x: torch.Tensor, attn: torch.Tensor, norm_weight: torch.Tensor,
                            norm_bias: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, eps: float,
                            window_size: int, grid: bool, dtype: torch.dtype) -> torch.Tensor:
    """See :func:`asid_arch.kernels.shared_window_attention`."""
    # the table is not read when sharing: w_v stands in for the pointer
    return _launch(x, attn, norm_weight, norm_bias, w_v, w_o, w_v, eps, 1.0, window_size, grid, share=True,
                   dtype=dtype)


@shared_window_attention.register_fake
def _(x, attn, norm_weight, norm_bias, w_v, w_o, eps, window_size, grid, dtype):
    return torch.empty_like(x)


@torch.library.custom_op('asid::shared_window_attention_backward', mutates_args=())
def shared_window_attention_backward(grad: torch.Tensor, x: torch.Tensor, attn: torch.Tensor,
                                     norm_weight: torch.Tensor, norm_bias: torch.Tensor, w_v: torch.Tensor,
                                     w_o: torch.Tensor, eps: float, window_size: int, grid: bool,
                                     dtype: torch.dtype) -> list[torch.Tensor]:
    """Gradients of ``asid::shared_window_attention``: x, the map, norm weight, norm bias, to_v, to_out."""
    dx, dattn, (d_v, d_o, d_gamma, d_beta) = _launch_backward(
        grad, None, x, attn, norm_weight, norm_bias, w_v, w_o, w_v, eps, 1.0, window_size, grid, share=True,
        dtype=dtype)
    return [dx, dattn] + [g.view_as(w).to(w.dtype, copy=True)
                          for g, w in ((d_gamma, norm_weight), (d_beta, norm_bias), (d_v, w_v), (d_o, w_o))]


@shared_window_attention_backward.register_fake
def _(grad, x, attn, norm_weight, norm_bias, w_v, w_o, eps, window_size, grid, dtype):
    return [torch.empty_like(t) for t in (x, attn, norm_weight, norm_bias, w_v, w_o)]


def _shared_window_attention_context(ctx, inputs, output):
    x, attn, norm_weight, norm_bias, w_v, w_o, eps, window_size, grid, dtype = inputs
    ctx.save_for_backward(x, attn, norm_weight, norm_bias, w_v, w_o)
    ctx.constants = eps, window_size, grid, dtype


def _shared_window_attention_grad(ctx, grad):
    grads = shared_window_attention_backward(grad, *ctx.saved_tensors, *ctx.constants)
    return (*grads, None, None, None, None)


shared_window_attention.register_autograd(_shared_window_attention_grad, setup_context=_shared_window_attention_context)

"""Fused GPU kernels for ASID's window attention (Triton), optional: the plain PyTorch modules define the function.

What is fused, and why: ``basicsr benchmark --profile`` (H200, ASID x4 fp16, 320x180 input,
compiled by Inductor: 537 kernels in 3.3 ms) showed a frame bound by its number of kernels, with
the SLA/SGA layers (window attention) the largest share. The attention half of every such layer,

    t = window_partition(x);  x = x + window_reverse(to_out(a @ v))

is one kernel here, one program per window: it gathers the window's pixels (local or grid layout)
straight from the map (NCHW or channels-last), normalises them and applies the projections and
the map on tensor cores, then adds the result back in place of the window. A layer that
*computes* its map (:func:`window_attention`) takes ``q, k, v`` from ``to_qkv``, adds the
relative-position bias and returns the softmax map for the layers that share it; a layer that
*shares* one (:func:`shared_window_attention`) takes ``v`` from ``to_v`` and applies the given
map. The roundings are the plain path's: LayerNorm statistics and the softmax in fp32; ``q k^T``
plus the bias, the map, ``v``, ``a @ v`` and ``to_out`` rounded to the compute dtype (the input's,
or autocast's, which leaves the residual in the input's dtype). One difference:
the bias is added in fp32, where the plain layer rounds it to the dtype first (in fp16, about 0.1%
of a map's entries one rounding apart; the tests hold the kernel to fp32 next to the plain layer).
Where the compiled plain layer launches 15-27 kernels, these launch one; the gated feed-forward
that ends each layer stays Inductor's (a kernel for it lost, docs/speed.md).

The backward is one kernel too, one program per window: it recomputes the window's forward from
``x`` (nothing but the layer's inputs is saved), then writes ``dx``, the shared map's gradient (or,
in a computing layer, takes the map's gradient from the sharing layers into the softmax's), and
the window's share of the weights' gradients, which one reduction sums over the windows. The
backward has no backward of its own: a loss that differentiates gradients (``create_graph=True``,
e.g. a gradient penalty) needs the plain layers (``train: kernels: false``).

:func:`use_fused_kernels` switches a network to these layers in place (the same parameters and
state_dict keys); :class:`asid_arch.inference.ASIDUpsampler` does it for its compiled network on
a GPU in fp16/bf16 (``kernels=``; ``basicsr infer --no-kernels`` turns it off), and
:class:`basicsr_ext.training.models.ASIDModel` for its compiled bf16 training step on a GPU
(``train: kernels: false`` turns it off). In fp32 on a GPU the plain layers serve: on an H200
the kernel's fp32 result (Triton, IEEE products) and the plain layer's (cuBLAS) differed by up to
6e-4, which side rounded more was not established.
``tests/test_kernels.py`` checks the kernels, forward and every gradient, against the plain layers
(on the CPU through Triton's interpreter, ``TRITON_INTERPRET=1``, also in fp32; on a GPU compiled,
also inside ``ASIDUpsampler`` and a compiled network's backward).
"""
import importlib.util
import warnings

import torch

from .asid_arch import SpatialSelfAttention


def available(device, dtype=torch.float16):
    """Whether the fused kernels can run on ``device`` in ``dtype``: a CUDA GPU (bf16: compute
    capability 8.0 or later), torch with ``torch.library.custom_op`` (2.4 on) and Triton 3 or later
    (torch's CUDA builds ship it; CPU-only builds do not)."""
    device = torch.device(device)
    if device.type != 'cuda' or not torch.cuda.is_available() or not hasattr(torch.library, 'custom_op'):
        return False
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        return False
    if importlib.util.find_spec('triton') is None:
        return False
    try:  # the module's version: nightly wheels ship it as the distribution pytorch-triton
        import triton
        return int(triton.__version__.split('.')[0]) >= 3
    except (ImportError, ValueError, AttributeError):
        return False


#: The dtypes the kernels compute in (fp32 through Triton's interpreter only: on a GPU the plain layers).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def compute_dtype(x):
    """The dtype the layer's products run in: autocast's where it is on for ``x``'s device, else ``x``'s."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def window_attention(x, norm, attention, window_size, grid, dtype=None):
    """``x + window_reverse(to_out(a @ v))`` and the map ``a = softmax(q k^T / sqrt(C) + bias)``
    of ``q, k, v = to_qkv(norm(window_partition(x)))``, in one kernel (an attention-computing layer);
    differentiable (its backward is one kernel too).

    Args:
        x (Tensor): (B, C, H, W) on a GPU, H and W multiples of ``window_size``. The op is
            registered by :func:`use_fused_kernels` (importing :mod:`asid_arch.triton_kernels`).
        norm (nn.LayerNorm): the layer's norm.
        attention (WindowAttention): the layer's attention (``to_qkv``, ``to_out``, ``rel_pos_bias``).
        window_size (int): window side w (w*w a power of two, at least 16).
        grid (bool): grid windows (SGA) or local ones (SLA); see ``window_partition``.
        dtype (torch.dtype | None): the products' dtype (None: :func:`compute_dtype`, as the
            plain layer's under autocast); the output keeps ``x``'s dtype.

    Returns:
        tuple[Tensor, Tensor]: the output map, and the attention map (B * H/w * W/w, w*w, w*w)
        in ``dtype``, windows ordered (b, i, j), as :class:`WindowAttention` returns it.
    """
    return torch.ops.asid.window_attention(x, norm.weight, norm.bias, attention.to_qkv.weight,
                                           attention.to_out[0].weight, attention.rel_pos_bias.weight, norm.eps,
                                           attention.scale, window_size, grid, dtype or compute_dtype(x))


def shared_window_attention(x, attn, norm, attention, window_size, grid, dtype=None):
    """``x + window_reverse(to_out(attn @ to_v(norm(window_partition(x)))))`` in one kernel
    (an attention-sharing layer); differentiable, also in ``attn``.

    Args:
        x (Tensor): as for :func:`window_attention`.
        attn (Tensor): (B * H/w * W/w, w*w, w*w) shared attention map, windows ordered (b, i, j).
        norm (nn.LayerNorm): the layer's norm.
        attention (SharedWindowAttention): the layer's attention (``to_v``, ``to_out``).
        window_size (int), grid (bool), dtype (torch.dtype | None): as for :func:`window_attention`.
    """
    return torch.ops.asid.shared_window_attention(x, attn, norm.weight, norm.bias, attention.to_v.weight,
                                                  attention.to_out[0].weight, norm.eps, window_size, grid,
                                                  dtype or compute_dtype(x))


class FusedSpatialAttention(SpatialSelfAttention):
    """An SLA/SGA layer whose attention half is one kernel, :func:`window_attention` (computing
    the map) or :func:`shared_window_attention` (sharing it), forward and backward. Same
    parameters and keys as the plain layer. In fp32 on a GPU, and in fp64, the plain layer runs."""

    def forward(self, x, attn=None):
        dtype = compute_dtype(x)
        if dtype not in KERNEL_DTYPES or x.is_cuda and dtype == torch.float32:
            return super().forward(x, attn)
        if self.share:
            x = shared_window_attention(x, attn, self.norm, self.attn, self.window_size, self.grid, dtype)
        else:
            x, attn = window_attention(x, self.norm, self.attn, self.window_size, self.grid, dtype)
        return self.gfn(self.cnorm(x)) + x, attn


def fusable(layer):
    """Whether ``layer`` is an SLA/SGA layer the kernel takes (w*w tokens a power of two >= 16)."""
    if type(layer) is not SpatialSelfAttention:
        return False
    tokens = layer.window_size**2
    return tokens >= 16 and tokens & (tokens - 1) == 0


def use_fused_kernels(net):
    """Switch ``net``'s SLA/SGA layers to :class:`FusedSpatialAttention`, in place (call it on
    the copy you run); returns the number of layers switched. Parameters and keys are unchanged.
    Where the kernel cannot be loaded (a broken Triton install), a warning, and nothing switched."""
    layers = [m for m in net.modules() if fusable(m)]
    if not layers:
        return 0
    try:
        from . import triton_kernels  # noqa: F401  (registers the ops; Triton is imported here, not with the package)
    except Exception as err:  # noqa: BLE001  (any failure to load an optional speed-up: the plain layers run)
        warnings.warn(f'the fused kernels could not be loaded ({type(err).__name__}: {err}); running the plain layers')
        return 0
    for layer in layers:
        layer.__class__ = FusedSpatialAttention  # a subclass adding no state: only forward differs
    return len(layers)

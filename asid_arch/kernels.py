"""Fused GPU kernels for ASID's inference (Triton), optional: the plain PyTorch modules define the function.

What is fused, and why: ``basicsr benchmark --profile`` (H200, ASID x4 fp16, 320x180 input,
compiled by Inductor: 537 kernels in 3.3 ms) showed a network bound by the number of its kernels
(~6 us each), not by arithmetic or memory. Two chains that Inductor launches as several kernels are
one kernel each here:

- :func:`shared_window_attention`, the attention half of a layer that *shares* an attention map
  (SLA/SGA of ``block1`` onwards; 39% of the profile),
  ``x + window_reverse(to_out(attn @ to_v(LayerNorm(window_partition(x)))))``: one program per
  window gathers its 64 pixels (local or grid layout) from the NCHW map, normalises them, applies
  ``to_v``, the shared 64x64 map and ``to_out`` on tensor cores and adds the result back.
- :func:`gated_feed_forward`, the feed-forward half of every SLA/SGA layer and both of ``BlockC``'s
  (24 a frame in ASID, 64 in ASID-D8), ``x + project_out(gelu(a) * b)`` with
  ``a, b = dwconv(project_in(cnorm(x)))``: a program computes an 8x8 tile from its 10x10
  neighbourhood (the depthwise 3x3's border), keeping the hidden map of 2C channels in a small
  scratch buffer of its own (reused tile after tile) for the nine shifted reads of the 3x3.

Both round as the plain path does (statistics in fp32; every matrix product, the depthwise
convolution and the gate rounded to the input dtype once). docs/speed.md has the figures.

:func:`use_fused_kernels` switches a copy of a network to these layers (the same parameters and
state_dict keys); :class:`asid_arch.inference.ASIDUpsampler` does it for its compiled network on
a GPU in fp16/bf16 (``kernels=``; ``basicsr infer --no-kernels`` turns it off). The kernels run
without autograd (inference); with gradients the layers run the plain path. In fp32 the plain
path serves: on an H200 the attention kernel's fp32 result (Triton, IEEE products) and the plain
layer's (cuBLAS) differed by up to 6e-4, which side rounded more was not established.
``tests/test_kernels.py`` checks the kernels against the plain modules (on the CPU through Triton's
interpreter, ``TRITON_INTERPRET=1``, also in fp32; on a GPU compiled, also inside ``ASIDUpsampler``).
"""
import importlib.util
import warnings

import torch

from .asid_arch import ChannelAttentionBlock, SpatialSelfAttention


def available(device, dtype=torch.float16):
    """Whether the fused kernels can run on ``device`` in ``dtype``: a CUDA GPU (bf16: compute
    capability 8.0 or later), torch with ``torch.library.custom_op`` (2.4 on) and Triton 3 or later
    (torch's CUDA builds ship it; CPU-only builds do not)."""
    device = torch.device(device)
    if device.type != 'cuda' or not torch.cuda.is_available() or not hasattr(torch.library, 'custom_op'):
        return False
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        return False
    try:
        from importlib.metadata import version
        return importlib.util.find_spec('triton') is not None and int(version('triton').split('.')[0]) >= 3
    except (ImportError, ValueError):
        return False


def shared_window_attention(x, attn, norm, to_v, to_out, window_size, grid):
    """``x + window_reverse(to_out(attn @ to_v(norm(window_partition(x)))))`` in one kernel.

    Args:
        x (Tensor): (B, C, H, W) on a GPU, H and W multiples of ``window_size``. The op is
            registered by :func:`use_fused_kernels` (importing :mod:`asid_arch.triton_kernels`).
        attn (Tensor): (B * H/w * W/w, w*w, w*w) shared attention map, windows ordered (b, i, j).
        norm (nn.LayerNorm), to_v, to_out (nn.Linear): the layer's modules (their weights are read).
        window_size (int): window side w (w*w a power of two, at least 16).
        grid (bool): grid windows (SGA) or local ones (SLA); see ``window_partition``.
    """
    return torch.ops.asid.shared_window_attention(x, attn, norm.weight, norm.bias, to_v.weight, to_out.weight,
                                                  norm.eps, window_size, grid)


def gated_feed_forward(x, norm, gfn):
    """``x + gfn(norm(x))`` in one kernel: channel LayerNorm, ``project_in``, the depthwise 3x3,
    ``gelu(a) * b``, ``project_out`` and the residual.

    Args:
        x (Tensor): (B, C, H, W) on a GPU, any H and W. The op is registered by
            :func:`use_fused_kernels` (importing :mod:`asid_arch.triton_kernels`).
        norm (ChannelLayerNorm), gfn (GatedFeedForward): the modules (their weights are read).
    """
    return torch.ops.asid.gated_feed_forward(x, norm.weight, norm.bias, gfn.project_in.weight, gfn.dwconv.weight,
                                             gfn.project_out.weight, norm.eps)


def _with_gradients(module, *inputs):
    """Whether autograd would record ``module``'s call (the kernels have no backward)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (*inputs, *module.parameters()))


class FusedSpatialSelfAttention(SpatialSelfAttention):
    """An SLA/SGA layer whose feed-forward half is :func:`gated_feed_forward` and, in a sharing
    layer, whose attention half is :func:`shared_window_attention` (without gradients; with them,
    the plain layer). Same parameters and keys as the plain layer."""

    def forward(self, x, attn=None):
        if _with_gradients(self, x, attn):
            return super().forward(x, attn)
        if self.share and _whole_tiles(self.window_size):
            x = shared_window_attention(x, attn, self.norm, self.attn.to_v, self.attn.to_out[0], self.window_size,
                                        self.grid)
        else:
            x, attn = self.attend(x, attn)
        return gated_feed_forward(x, self.cnorm, self.gfn), attn


class FusedChannelAttentionBlock(ChannelAttentionBlock):
    """``BlockC`` with its two feed-forward halves as :func:`gated_feed_forward` (without
    gradients; with them, the plain block). Same parameters and keys as the plain block."""

    def forward(self, x):
        if _with_gradients(self, x):
            return super().forward(x)
        x = self.cttn1(self.canorm1(x)) + x
        x = gated_feed_forward(x, self.cnorm1, self.gfn1)
        x = self.cttn2(self.canorm2(x)) + x
        return gated_feed_forward(x, self.cnorm2, self.gfn2)


#: Widest layer the kernels take (a tile's channels are held in registers, padded to a power of 2)
MAX_CHANNELS = 64
FUSED = {SpatialSelfAttention: FusedSpatialSelfAttention, ChannelAttentionBlock: FusedChannelAttentionBlock}


def _whole_tiles(window_size):
    """Whether a window's w*w tokens are a tile ``shared_window_attention`` takes (a power of 2, >= 16)."""
    tokens = window_size**2
    return tokens >= 16 and tokens & (tokens - 1) == 0


def fusable(module):
    """Whether ``module`` is an SLA/SGA layer or a ``BlockC`` of at most :data:`MAX_CHANNELS` channels."""
    if type(module) is SpatialSelfAttention:
        return module.cnorm.weight.numel() <= MAX_CHANNELS
    if type(module) is ChannelAttentionBlock:
        return module.cnorm1.weight.numel() <= MAX_CHANNELS
    return False


def use_fused_kernels(net):
    """Switch ``net``'s SLA/SGA layers and ``BlockC`` blocks to their fused classes, in place (call
    it on the copy you run); returns the number of modules switched. Parameters and keys are
    unchanged. Where the kernels cannot be loaded (a broken Triton install), a warning, and nothing
    switched."""
    modules = [m for m in net.modules() if fusable(m)]
    if not modules:
        return 0
    try:
        from . import triton_kernels  # noqa: F401  (registers the ops; Triton is imported here, not with the package)
    except Exception as err:  # noqa: BLE001  (any failure to load an optional speed-up: the plain layers run)
        warnings.warn(f'the fused kernels could not be loaded ({type(err).__name__}: {err}); running the plain layers')
        return 0
    for module in modules:
        module.__class__ = FUSED[type(module)]  # a subclass adding no state: only forward differs
    return len(modules)

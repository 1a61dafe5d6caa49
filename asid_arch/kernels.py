"""Fused GPU kernels for ASID's inference (Triton), optional: the plain PyTorch modules define the function.

What is fused, and why (``basicsr benchmark --profile`` on an H200, ASID x4 fp16, 320x180 input,
compiled by Inductor: 537 kernels in 3.3 ms, 6.1 us a kernel against a 1.6 us traffic floor,
so the time is the number of kernels): the attention half of a layer that *shares* its
attention map (SLA/SGA of ``block1`` onwards, 39% of the time in ASID, 50% in ASID-D8):

    t = window_partition(x);  x = x + window_reverse(to_out(attn @ to_v(LayerNorm(t))))

is one kernel here, :func:`shared_window_attention`, one program per window: it gathers the
window's 64 pixels (local or grid layout) straight from the NCHW map, normalises them, applies
``to_v``, the shared 64x64 map and ``to_out`` on tensor cores, and adds the result back in place of
the window, with the same roundings as the plain path (LayerNorm statistics in fp32; ``v``,
``attn @ v`` and ``to_out`` rounded to the input dtype), where the compiled plain layer launches
the norm, three matrix products and the add-back one after another.

:func:`use_fused_kernels` switches a copy of a network to these layers (the same parameters and
state_dict keys); :class:`asid_arch.inference.ASIDUpsampler` does it for its compiled network on
a GPU in fp16/bf16 (``kernels=``; ``basicsr infer --no-kernels`` turns it off). Measured on one
H200 (``basicsr benchmark --paths 'compile fp16' 'compile fp16 unfused' --batch 1 4``, 320x180
input): ASID 3.38 against 3.47 ms for one frame, peak memory 0.146 against 0.183 GB; ASID-D8 7.96
against 8.17 ms; in batches of 4 the same time (2.36 / 5.81 ms a frame), 14% less memory. The
kernels run without autograd (inference); with gradients the layers run the plain path. In
fp32 the plain path serves (Triton's fp32 dot on an H200 differed from cuBLAS by up to 6e-4).
``tests/test_kernels.py`` checks the kernel against the plain layer (on the CPU through Triton's
interpreter, ``TRITON_INTERPRET=1``, also in fp32; on a GPU compiled, also inside ``ASIDUpsampler``).
"""
import importlib.util

import torch

from .asid_arch import SpatialSelfAttention


def available(device):
    """Whether the fused kernels can run on ``device``: a CUDA GPU, and Triton installed (torch's
    CUDA builds ship it; CPU-only builds do not)."""
    return torch.device(device).type == 'cuda' and importlib.util.find_spec('triton') is not None


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


class FusedSharingLayer(SpatialSelfAttention):
    """A sharing SLA/SGA layer whose attention half is :func:`shared_window_attention` (without
    gradients; with them, the plain layer). Same parameters and keys as the plain layer."""

    def forward(self, x, attn=None):
        if torch.is_grad_enabled() and (x.requires_grad or self.norm.weight.requires_grad):
            return super().forward(x, attn)
        x = shared_window_attention(x, attn, self.norm, self.attn.to_v, self.attn.to_out[0], self.window_size,
                                    self.grid)
        return self.gfn(self.cnorm(x)) + x, attn


def fusable(layer):
    """Whether ``layer`` is a sharing SLA/SGA layer the kernel takes (w*w tokens a power of two >= 16)."""
    if type(layer) is not SpatialSelfAttention or not layer.share:
        return False
    tokens = layer.window_size**2
    return tokens >= 16 and tokens & (tokens - 1) == 0


def use_fused_kernels(net):
    """Switch ``net``'s sharing SLA/SGA layers to :class:`FusedSharingLayer`, in place (call it on
    the copy you run); returns the number of layers switched. Parameters and keys are unchanged."""
    from . import triton_kernels  # noqa: F401  (registers the op; Triton is imported here, not with the package)
    layers = [m for m in net.modules() if fusable(m)]
    for layer in layers:
        layer.__class__ = FusedSharingLayer  # a subclass adding no state: only forward differs
    return len(layers)

"""Fused GPU kernels for ASID's inference (Triton), optional: the plain PyTorch modules define the function.

What is fused, and why: ``basicsr benchmark --profile`` (H200, ASID x4 fp16, 320x180 input,
compiled by Inductor: 537 kernels in 3.3 ms, bound by the number of kernels) put 39% of the time
in the layers that *share* an attention map (SLA/SGA of ``block1`` onwards). Their attention half

    t = window_partition(x);  x = x + window_reverse(to_out(attn @ to_v(LayerNorm(t))))

is one kernel here, :func:`shared_window_attention`, one program per window: it gathers the
window's 64 pixels (local or grid layout) straight from the NCHW map, normalises them, applies
``to_v``, the shared 64x64 map and ``to_out`` on tensor cores, and adds the result back in place of
the window, with the same roundings as the plain path (LayerNorm statistics in fp32; ``v``,
``attn @ v`` and ``to_out`` rounded to the input dtype), where the compiled plain layer launches
the norm, three matrix products and the add-back one after another. The gain was smaller than
that share (2.6% a frame, 13-20% less peak memory: docs/speed.md has the figures and why).

:func:`use_fused_kernels` switches a copy of a network to these layers (the same parameters and
state_dict keys); :class:`asid_arch.inference.ASIDUpsampler` does it for its compiled network on
a GPU in fp16/bf16 (``kernels=``; ``basicsr infer --no-kernels`` turns it off). The kernels run
without autograd (inference); with gradients the layers run the plain path. In fp32 the plain
path serves: on an H200 the kernel's fp32 result (Triton, IEEE products) and the plain layer's
(cuBLAS) differed by up to 6e-4, which side rounded more was not established.
``tests/test_kernels.py`` checks the kernel against the plain layer (on the CPU through Triton's
interpreter, ``TRITON_INTERPRET=1``, also in fp32; on a GPU compiled, also inside ``ASIDUpsampler``).
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


class FusedSharingLayer(SpatialSelfAttention):
    """A sharing SLA/SGA layer whose attention half is :func:`shared_window_attention` (without
    gradients; with them, the plain layer). Same parameters and keys as the plain layer."""

    def forward(self, x, attn=None):
        if torch.is_grad_enabled() and (x.requires_grad or attn.requires_grad
                                        or any(p.requires_grad for p in self.parameters())):
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
    the copy you run); returns the number of layers switched. Parameters and keys are unchanged.
    Where the kernel cannot be loaded (a broken Triton install), a warning, and nothing switched."""
    layers = [m for m in net.modules() if fusable(m)]
    if not layers:
        return 0
    try:
        from . import triton_kernels  # noqa: F401  (registers the op; Triton is imported here, not with the package)
    except Exception as err:  # noqa: BLE001  (any failure to load an optional speed-up: the plain layers run)
        warnings.warn(f'the fused kernels could not be loaded ({type(err).__name__}: {err}); running the plain layers')
        return 0
    for layer in layers:
        layer.__class__ = FusedSharingLayer  # a subclass adding no state: only forward differs
    return len(layers)

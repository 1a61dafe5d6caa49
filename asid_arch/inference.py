"""Upscale images with ASID from Python: an array or a tensor in, the upscaled one out.

::

    from asid_arch.inference import ASIDUpsampler

    up = ASIDUpsampler('net_g_latest.pth')   # a BasicSR checkpoint, the authors' release file,
                                             # a loaded state_dict or an nn.Module
    sr = up.upscale(rgb)                     # numpy: HxW, HxWx1, HxWx2, HxWx3, HxWx4 (RGB order)
    sr = up.upscale_tensor(batch)            # torch: (N, 3, H, W) or (3, H, W), float in [0, 1]
    srs = up.upscale_frames(frames)          # numpy RGB frames of one size, in one network call

Arrays are RGB / RGBA (as PIL, imageio and matplotlib give them; convert OpenCV's BGR first)
in ``uint8``, ``uint16`` or floating point in [0, 1], and come back in the same layout and
dtype (floats as ``float32``). Greyscale is run as RGB (the grey replicated) and returned
as greyscale (ITU-R BT.601 luma of the output, as OpenCV's RGB2GRAY). Alpha is upscaled on
its own (``alpha='asid'``: by the network, the alpha replicated to RGB and the output's
channel mean kept, as Real-ESRGAN does; ``'bicubic'``: bicubic interpolation) and
re-attached; a constant alpha (fully opaque images saved with an alpha channel) stays
exactly constant either way.

Precision: fp32 on the CPU; on a GPU fp16 by default (:mod:`asid_arch.runtime` says why; the
device, precision and memory budget are chosen there).

Memory layout: on the CPU the network runs on channels-last tensors by default (the same
function, to 1e-6; oneDNN's convolutions, the depthwise ones above all, are faster in that
layout: 121-140 against 219-220 ms for ASID x4 on a 128x128 input, 2 threads, in
``basicsr benchmark --device cpu --paths plain default``), and so does the network compiled on
a GPU (ASID 320x180 fp16 in batches of 4 on an H200: 2.18 against 2.44 ms a frame, with
cuDNN's timed algorithm choice, :mod:`asid_arch.graphs`).

Large images: by default the whole image goes through the network at once when its
estimated memory fits (half the free GPU memory, or half the available RAM), otherwise it
is cut into square tiles that fit (:func:`asid_arch.tiling.tiled_forward`, overlaps
averaged). ``tile=N`` forces N-pixel tiles, ``tile=0`` the whole image; ``tile=64,
tile_overlap=24`` is the ASID authors' evaluation protocol.

Note that ASID is not a local operator: squeeze-excitation (a global mean), the grid
windows of SGA and ``cttn2`` (dilated over the whole image) and ESA's pooled branch let
every output pixel depend on the whole input. Tiled output is therefore close to, but not
bit-identical with, whole-image output, even far from tile seams; for networks whose
receptive field is smaller than the overlap it is identical there.
"""
import copy
import warnings
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import build_asid
from .graphs import CompiledNetwork
from .kernels import available as fused_kernels_available
from .kernels import fusable, use_fused_kernels
from .runtime import PRECISIONS, bytes_per_pixel, choose_tile, resolve_device, resolve_precision
from .tiling import tile_grid, tiled_forward

#: ITU-R BT.601 luma weights (R, G, B), as OpenCV's COLOR_RGB2GRAY.
LUMA = (0.299, 0.587, 0.114)


class NonFiniteOutput(ArithmeticError):
    """The network's output holds NaN or infinity (broken weights, or an overflow fp32 cannot fix)."""


def _model_scale(model, scale):
    upscale = getattr(model, 'upscale', None)
    if scale is not None and upscale is not None and scale != upscale:
        raise ValueError(f'the model is a x{upscale} network, but scale={scale!r} was given')
    scale = scale if scale is not None else upscale
    if not isinstance(scale, int) or scale < 1:
        raise ValueError('pass scale= for a network without an integer `upscale` attribute')
    return scale


class NetworkCall(nn.Module):
    """A whole network call as one function: the input cast to the network's dtype and layout, the
    network, its output in fp32 (tiles are accumulated and averaged in fp32) and (fp16) whether
    that output is finite. The upsampler calls it eagerly, or compiled: then on a GPU one CUDA
    graph holds all of it, and around the replay only the input's copy into the graph, the
    output's copy out and the reading of the flag remain (one H200, ASID fp16 320x180: a call took
    0.35 ms longer than its graph's replay with the cast and checks around the graph, 0.07 ms with
    them inside; docs/speed.md).

    Args:
        net (nn.Module): the network, in its dtype and memory format.
        dtype (torch.dtype | None): the dtype inputs are cast to (None: as they come).
        memory_format (torch.memory_format): the layout inputs are given.
        check_finite (bool): also return whether the output is finite (else None): fp16's overflow
            check.
    """

    def __init__(self, net, dtype, memory_format, check_finite=False):
        super().__init__()
        self.net, self.dtype, self.memory_format, self.check_finite = net, dtype, memory_format, check_finite

    def forward(self, x):
        """(N, 3, H, W) -> (float32 output, 0-d bool tensor: all of it finite; or None)."""
        out = self.net(x.to(self.dtype or x.dtype, memory_format=self.memory_format)).float()
        return out, torch.isfinite(out).all() if self.check_finite else None


class ASIDUpsampler:
    """Upscale arrays and tensors with an ASID network (or any x``scale`` SR network).

    Args:
        model (str | os.PathLike | dict | nn.Module): checkpoint path (BasicSR
            ``params``/``params_ema`` or the authors' raw release), a loaded checkpoint, or a
            network. Checkpoints are built with :func:`asid_arch.checkpoint.build_asid`:
            variant and scale come from the weights, value range (-1, 1) for the authors'
            raw release and (0, 1) for BasicSR files.
        device (str | torch.device): 'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1'...
        precision (str): 'auto' (fp32 on the CPU, :data:`GPU_AUTO_PRECISION` on a GPU),
            'fp32', 'fp16' or 'bf16'. Reduced precisions cast the weights and inputs (see
            ``amp``); the network keeps its softmaxes in fp32. An fp16 result that is not
            finite (overflow) is computed again in fp32, with a warning.
        tile (int | None): None: whole image when it fits in memory, tiles otherwise.
            0: always the whole image. N > 0: ``min(N, H, W)`` px square LR tiles, as the
            authors' tester cuts them.
        tile_overlap (int): LR pixels shared by neighbouring tiles (averaged). Default: 24
            (half the tile side for images too thin for that).
        alpha (str): how alpha is upscaled: 'asid' (default) or 'bicubic'.
        scale, num_groups, value_range: checked against / passed to ``build_asid`` for a
            checkpoint (``scale`` must match the weights); ``scale`` is needed for a network
            without an ``upscale`` attribute.
        max_memory (int | None): bytes the automatic tile choice may plan to use. Default:
            :data:`asid_arch.runtime.MEMORY_SHARE` of the memory free at the time of each call.
        amp (bool): False (default): fp16/bf16 by casting a copy of the network and the
            inputs (the fastest on an H100, as accurate). True: run under ``torch.autocast``
            with fp32 weights instead.
        channels_last (bool | None): run on channels-last tensors (a copy of the network is
            converted). None (default): where it was measured faster (docs/speed.md), for
            convolutional networks: on the CPU, and on a GPU in the compiled network only (the
            sizes left eager run contiguous there).
        compile (bool | collection): run the network through ``torch.compile`` (Inductor; on a GPU
            captured as one CUDA graph per input size, :class:`asid_arch.graphs.CompiledNetwork`):
            the same function (tested against the plain path), faster for many images of one
            size (video frames), with a compilation for each new size. Default: False (eager). A
            collection of (height, width) sizes compiles for network inputs of those sizes only
            and runs the others eagerly (a folder of video frames with a few odd images compiles
            once). A compiled upsampler serves one thread at a time (its graphs' buffers are
            shared): one per thread.
        kernels (str | bool): the fused Triton kernels of :mod:`asid_arch.kernels` (the same
            function): 'auto' (default) or True: in the compiled network on a GPU, in fp16/bf16,
            where Triton is installed; False: never.

    Precision and compilation are chosen here, for every caller (``basicsr infer``, the
    benchmark, Python users); the network itself only defines the function.
    """

    def __init__(self, model, device='auto', precision='auto', tile=None, tile_overlap=24, alpha='asid',
                 scale=None, num_groups=None, value_range=None, max_memory=None, amp=False, channels_last=None,
                 compile=False, kernels='auto'):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = PRECISIONS[self.precision]
        if tile is not None and (not isinstance(tile, int) or tile < 0):
            raise ValueError(f'tile must be None, 0 or a positive number of pixels, got {tile!r}')
        if not isinstance(tile_overlap, int) or tile_overlap < 0:
            raise ValueError(f'tile_overlap must be a non-negative number of pixels, got {tile_overlap!r}')
        if tile and tile_overlap >= tile:
            raise ValueError(f'tile_overlap ({tile_overlap}) must be smaller than tile ({tile})')
        if alpha not in ('asid', 'bicubic'):
            raise ValueError(f"alpha must be 'asid' or 'bicubic', got {alpha!r}")
        if kernels is True:
            kernels = 'auto'  # used where they serve, as by default
        if kernels != 'auto' and kernels is not False:
            raise ValueError(f"kernels must be 'auto' (or True) or False, got {kernels!r}")
        self.tile, self.tile_overlap, self.alpha, self.max_memory = tile, tile_overlap, alpha, max_memory
        self.kernels = kernels

        if isinstance(model, nn.Module):
            if value_range is not None or num_groups is not None:
                raise ValueError('value_range and num_groups apply to checkpoints, not to a built network')
            net = model
        else:
            net = build_asid(model, upscale=scale, num_groups=num_groups, value_range=value_range)
        self.scale = _model_scale(net, scale)
        self.cast = self.dtype != torch.float32 and not amp
        net = net.eval().requires_grad_(False).to(self.device)
        #: the fp32 network, for fp16 results that overflow
        self.net_fp32 = net
        convolutional = any(p.dim() == 4 for p in net.parameters())  # not e.g. an ONNX Runtime session
        auto, channels_last = channels_last is None, bool(channels_last)
        self.channels_last = channels_last or auto and convolutional and self.device.type == 'cpu'
        #: the layout of the eager network's tensors, and of the compiled one's (:meth:`compile_network`)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.compiled_memory_format = (torch.channels_last if channels_last or auto and convolutional
                                       else torch.contiguous_format)
        # nn.Module.to() works in place: convert a copy, leave the caller's network alone
        if self.cast or self.channels_last:
            net = copy.deepcopy(net).to(memory_format=self.memory_format)
            net = net.to(self.dtype) if self.cast else net
        self.net = net
        self._eager = self._network_call(net, self.memory_format)
        self.compiled, self.compile_sizes, self.fused_layers = False, None, 0
        if compile:
            self.compile_network(None if isinstance(compile, bool) else compile)
        self._warned_overflow = False
        self._bytes_per_pixel = bytes_per_pixel(net)

    def _network_call(self, net, memory_format):
        """``net`` with this upsampler's input cast, layout, fp32 output and fp16 overflow check."""
        return NetworkCall(net, self.dtype if self.cast else None, memory_format,
                           check_finite=self.dtype == torch.float16)

    def compile_network(self, sizes=None):
        """Run the network through ``torch.compile`` from now on (see ``compile`` above); ``sizes``:
        the network input sizes to compile for, (H, W) for any batch or (N, H, W) for batches of
        N, the others staying eager (None: all)."""
        net = self.net
        # a copy where the compiled network differs: self.net stays as it is for the sizes that are
        # not compiled (and weights changed in self.net later do not reach the compiled sizes)
        if self.compiled_memory_format != self.memory_format:  # on a GPU by default: channels-last
            net = copy.deepcopy(net).to(memory_format=self.compiled_memory_format)
        if (self.kernels == 'auto' and self.dtype != torch.float32 and fused_kernels_available(self.device, self.dtype)
                and any(map(fusable, net.modules()))):
            net = copy.deepcopy(net) if net is self.net else net
            #: SLA/SGA layers that run the fused attention kernel in the compiled network
            self.fused_layers = use_fused_kernels(net)
        # static shapes; on a GPU one CUDA graph per input shape (asid_arch.graphs says why not reduce-overhead)
        self._network = CompiledNetwork(self._network_call(net, self.compiled_memory_format))
        self.compiled = True
        #: network input sizes, (H, W) or (N, H, W), that run compiled; None: all
        self.compile_sizes = None if sizes is None else {tuple(size) for size in sizes}

    def __repr__(self):
        net = self.net
        name = type(net).__name__
        if hasattr(net, 'num_groups'):
            name += (f' x{self.scale} ({net.num_groups} groups, {net.num_feat} features, '
                     f'value range [{net.value_range[0]}, {net.value_range[1]}])')
        note = getattr(self.net_fp32, 'value_range_note', None)
        note = f'; value range {note}' if note else ''
        return f'ASIDUpsampler({name}, device={self.device}, precision={self.precision}){note}'

    # ------------------------------------------------------------------------------------
    # planning
    # ------------------------------------------------------------------------------------
    def plan(self, height, width, batch=1):
        """Tile size used for a ``height`` x ``width`` input: None means the whole image
        (:func:`asid_arch.runtime.choose_tile`)."""
        return choose_tile(height, width, batch, self.tile, self.tile_overlap, self.max_memory, self.device,
                           self._bytes_per_pixel)

    def num_tiles(self, height, width, batch=1):
        """Number of network calls :meth:`upscale_tensor` makes for such an input (1: whole image)."""
        tile = self.plan(height, width, batch)
        if tile is None:
            return 1
        _, _, rows, cols = tile_grid(height, width, tile, self.tile_overlap)
        return len(rows) * len(cols)

    def describe_plan(self, height, width, batch=1):
        """'whole image' or 'tiles of N px, overlap M px (K tiles)', for logs."""
        tile = self.plan(height, width, batch)
        if tile is None:
            return 'whole image'
        side, overlap, rows, cols = tile_grid(height, width, tile, self.tile_overlap)
        return f'tiles of {side} px, overlap {overlap} px ({len(rows) * len(cols)} tiles)'

    def network_passes(self, img):
        """How many times :meth:`upscale` runs the network over ``img``: 2 with an alpha
        channel that is upscaled by ASID and not constant, else 1."""
        arr = np.asarray(img)
        if arr.ndim == 3 and arr.shape[2] in (2, 4) and self.alpha == 'asid':
            alpha = arr[..., -1]
            return 1 if (alpha == alpha.flat[0]).all() else 2
        return 1

    # ------------------------------------------------------------------------------------
    # tensors
    # ------------------------------------------------------------------------------------
    def run_network(self, x):
        """One network call as configured (precision, compilation): float32 (N, 3, H, W) on
        :attr:`device` in, float32 out, not clamped (fp16 overflow computed again in fp32)."""
        amp = nullcontext() if self.cast or self.dtype == torch.float32 else torch.autocast(self.device.type,
                                                                                             dtype=self.dtype)
        sizes, size = self.compile_sizes, tuple(x.shape[-2:])
        compiled = self.compiled and (sizes is None or size in sizes or (x.shape[0], *size) in sizes)
        with amp:
            out, finite = (self._network if compiled else self._eager)(x)
        if compiled and self.device.type == 'cuda':
            out = out.clone()  # a CUDA graph's output is overwritten by its next replay
        if self.dtype == torch.float16 and not finite:
            if not self._warned_overflow:
                warnings.warn('fp16 overflowed (non-finite output): computing in fp32 instead', stacklevel=3)
                self._warned_overflow = True
            out = self.net_fp32(x)
        return out

    def upscale_tensor(self, x, on_tile=None):
        """Upscale a float tensor (N, 3, H, W) or (3, H, W) of RGB values in [0, 1].

        Args:
            x (Tensor): the input on any device; values are taken as [0, 1] RGB.
            on_tile (callable, optional): called after each network call (progress bars).

        Returns:
            Tensor: float32, (N, 3, H*s, W*s) or (3, H*s, W*s), clamped to [0, 1], on
            ``x``'s device.

        Raises:
            NonFiniteOutput: the network's output is not finite (never clamped to black).
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'upscale_tensor expects a torch.Tensor, got {type(x).__name__}')
        if x.dim() not in (3, 4) or x.shape[-3] != 3 or x.shape[-1] == 0 or x.shape[-2] == 0:
            raise ValueError(f'expected a (N, 3, H, W) or (3, H, W) tensor, got shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise ValueError(f'expected a floating-point tensor in [0, 1], got {x.dtype}')
        single = x.dim() == 3
        batch = x[None] if single else x
        out_device = x.device
        batch = batch.to(self.device, torch.float32)
        n, _, h, w = batch.shape
        tile = self.plan(h, w, n)
        with torch.inference_mode():
            if tile is None:
                out = self.run_network(batch)
                if on_tile is not None:
                    on_tile()
            else:
                out = tiled_forward(self.run_network, batch, self.scale, tile, self.tile_overlap, on_tile)
            if not torch.isfinite(out).all():
                raise NonFiniteOutput('the network gave NaN or infinite values')
            out = out.clamp_(0, 1).to(out_device)
        return out[0] if single else out

    # ------------------------------------------------------------------------------------
    # arrays
    # ------------------------------------------------------------------------------------
    def _upscale_alpha(self, alpha, on_tile):
        """(H, W) float32 in [0, 1] -> (H*s, W*s)."""
        h, w = alpha.shape
        s = self.scale
        if (alpha == alpha.flat[0]).all():
            return np.full((h * s, w * s), alpha.flat[0], np.float32)
        t = torch.from_numpy(np.ascontiguousarray(alpha))[None, None]
        if self.alpha == 'bicubic':
            return F.interpolate(t, scale_factor=s, mode='bicubic', align_corners=False).clamp_(0, 1)[0, 0].numpy()
        out = self.upscale_tensor(t.expand(1, 3, h, w), on_tile)
        return out[0].mean(0).numpy()

    def upscale(self, img, on_tile=None):
        """Upscale an image array.

        Args:
            img (np.ndarray): HxW or HxWx1 (grey), HxWx2 (grey + alpha), HxWx3 (RGB) or
                HxWx4 (RGBA); ``uint8``, ``uint16``, or floating point in [0, 1] (values
                outside are clipped).
            on_tile (callable, optional): called after each network call.

        Returns:
            np.ndarray: (H*s)x(W*s) with the same channels; ``uint8``/``uint16`` as given,
            ``float32`` for float input.
        """
        arr = np.asarray(img)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(f'expected an HxW, HxWx1, HxWx2, HxWx3 or HxWx4 image, got shape {arr.shape}')
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f'empty image of shape {arr.shape}')
        data = _to_float(arr)
        if data.ndim == 2:
            data = data[..., None]
        channels = data.shape[2]
        grey = channels in (1, 2)
        alpha = data[..., -1] if channels in (2, 4) else None
        rgb = np.repeat(data[..., :1], 3, axis=2) if grey else data[..., :3]

        t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        out = self.upscale_tensor(t, on_tile).numpy()  # (3, H*s, W*s)
        if grey:
            out = sum(c * out[i] for i, c in enumerate(LUMA))[None]
        planes = list(out)
        if alpha is not None:
            planes.append(self._upscale_alpha(alpha, on_tile))
        out = np.stack(planes, axis=-1)
        if arr.ndim == 2:
            out = out[..., 0]
        return _from_float(out, arr.dtype)

    def upscale_frames(self, frames, pad_to=None):
        """Upscale RGB frames of one size in one network call (a batch): what :meth:`upscale`
        gives for each, faster on a GPU for many small frames (video).

        Args:
            frames (list[np.ndarray]): HxWx3 arrays of one shape and dtype (as :meth:`upscale`).
            pad_to (int, optional): run a batch of this many frames, the last frame repeated
                to fill it (a network compiled for batches of ``pad_to`` then serves a last,
                shorter group too).

        Returns:
            list[np.ndarray]: the upscaled frames, in order.
        """
        arrs = [np.asarray(f) for f in frames]
        if not arrs:
            return []
        first = arrs[0]
        if first.ndim != 3 or first.shape[2] != 3 or 0 in first.shape:
            raise ValueError(f'upscale_frames expects HxWx3 RGB frames, got shape {first.shape}')
        for a in arrs[1:]:
            if a.shape != first.shape or a.dtype != first.dtype:
                raise ValueError(f'upscale_frames expects frames of one shape and dtype: {first.shape} {first.dtype} '
                                 f'and {a.shape} {a.dtype}')
        if pad_to is not None and len(arrs) > pad_to:
            raise ValueError(f'{len(arrs)} frames do not fit pad_to={pad_to}')
        floats = [_to_float(a) for a in arrs]
        batch = np.stack(floats + floats[-1:] * ((pad_to or 0) - len(arrs)))  # padded with the last frame
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(self.device)
        out = self.upscale_tensor(x)[:len(arrs)].permute(0, 2, 3, 1)  # stays on the device: quantised there
        if first.dtype == np.uint8 or first.dtype == np.uint16:  # as _from_float, before the copy to the host
            out = out.mul(float(np.iinfo(first.dtype).max)).round_()
            out = out.to(torch.uint8 if first.dtype == np.uint8 else torch.int32)
        out = out.cpu().numpy()
        return [out[i].astype(first.dtype if first.dtype == np.uint16 else out.dtype) for i in range(len(arrs))]


def _to_float(arr):
    """uint8 / uint16 / float image -> float32 in [0, 1]."""
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32), 0, 1)
    raise ValueError(f'expected uint8, uint16 or float pixels, got {arr.dtype}')


def _from_float(out, dtype):
    """float32 in [0, 1] -> ``dtype`` (rounded for integers; float32 for floats)."""
    if dtype == np.uint8 or dtype == np.uint16:
        peak = float(np.iinfo(dtype).max)
        return np.clip(np.round(out * peak), 0, peak).astype(dtype)
    return out.astype(np.float32)

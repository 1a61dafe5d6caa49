"""Where and how ASID runs for inference: the device, the precision, the memory budget and the
tiles it allows.

:class:`asid_arch.inference.ASIDUpsampler` asks these; the network class itself holds the
architecture only.
"""
import math
import os
import warnings

import torch

#: Accepted ``precision`` names and their dtypes.
PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
#: What ``precision='auto'`` picks on a GPU: the fastest precision whose Set5 PSNR stays
#: within 0.01 dB of fp32 (``python -m basicsr_ext.commands.precision_check``). Measured on an H100
#: (torch 2.11, ASID x4 trained briefly on BSDS200, Set5 x4 Y-PSNR 28.23 dB, one 512x512 LR
#: image): fp32 38.1 ms; fp16 cast 27.2 ms, -0.0001 dB; fp16 autocast 30.7 ms, +0.0000 dB;
#: bf16 cast 31.8 ms, -0.0073 dB; bf16 autocast 35.0 ms, -0.0074 dB. So fp16, cast. (On a
#: 256x256 LR image the eager network is launch-bound and fp32 was the fastest, 20.9 vs
#: 29.1 ms for fp16: precision only pays off on images large enough to keep the GPU busy.)
#: On the CPU 'auto' is fp32.
GPU_AUTO_PRECISION = 'fp16'
#: Peak memory per LR input pixel of ASID (48 features, fp32, no grad), with some margin:
#: about 8 KB was measured on the CPU for 64..256 px inputs. Scaled with ``num_feat``.
BYTES_PER_PIXEL = 10 * 1024
#: Share of the free memory that the automatic whole-image/tile choice may plan to use.
MEMORY_SHARE = 0.5
#: Smallest tile the automatic choice makes (a multiple of the window size 8).
MIN_AUTO_TILE = 64


def resolve_device(device='auto'):
    """``'auto'`` -> CUDA when available, else CPU; anything else is checked and returned."""
    if device is None or device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(device)
    except RuntimeError:  # torch's message lists its twenty device types
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device} requested, but CUDA is not available (torch {torch.__version__})')
    return device


def resolve_precision(precision, device):
    """``'auto'`` -> fp32 on the CPU, :data:`GPU_AUTO_PRECISION` on a GPU; others are checked."""
    if precision is None or precision == 'auto':
        return GPU_AUTO_PRECISION if device.type == 'cuda' else 'fp32'
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of auto, {", ".join(PRECISIONS)}; got {precision!r}')
    if precision != 'fp32' and device.type == 'cpu':
        warnings.warn(f'{precision} on the CPU is emulated and usually slower than fp32', stacklevel=3)
    return precision


def host_available_memory():
    """The kernel's estimate of the memory available without swapping (``MemAvailable``), in bytes;
    where there is no /proc/meminfo, the free pages; None when neither is known. The one reader of
    the host's free memory (the in-memory data set's room check uses it too)."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                name, _, value = line.partition(':')
                if name == 'MemAvailable':
                    return int(value.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device):
    """Free memory in bytes on ``device`` (CUDA: free device memory; CPU: :func:`host_available_memory`,
    4 GiB when unknown) for the tile plan."""
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    available = host_available_memory()
    return available if available is not None else 4 << 30


def bytes_per_pixel(net):
    """Peak memory per LR input pixel of ``net``: :data:`BYTES_PER_PIXEL` scaled with its ``num_feat``."""
    return BYTES_PER_PIXEL * getattr(net, 'num_feat', 48) / 48


def choose_tile(height, width, batch, tile, tile_overlap, max_memory, device, per_pixel):
    """The LR tile side for a batch of ``batch`` ``height`` x ``width`` inputs; None: the whole image.

    ``tile`` N > 0 gives N-pixel tiles (when smaller than the image), 0 the whole image always;
    None chooses: the whole image when the batch's estimated memory (``per_pixel`` bytes per
    input pixel, :func:`bytes_per_pixel`) fits in ``max_memory`` bytes (None:
    :data:`MEMORY_SHARE` of what is free on ``device`` now), else the largest square tile that
    fits (a multiple of 8, at least :data:`MIN_AUTO_TILE` and twice ``tile_overlap``).
    """
    if tile is not None:
        return tile if 0 < tile < max(height, width) else None
    budget = max_memory if max_memory is not None else MEMORY_SHARE * available_memory(device)
    if batch * height * width * per_pixel <= budget:
        return None
    side = int(math.sqrt(max(budget, 0) / (batch * per_pixel))) // 8 * 8
    side = max(side, MIN_AUTO_TILE, (2 * tile_overlap + 8) // 8 * 8)
    return side if side < max(height, width) else None

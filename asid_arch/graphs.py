"""A network compiled once and, on a GPU, replayed as one CUDA graph per input shape.

:class:`CompiledNetwork` is how :class:`asid_arch.inference.ASIDUpsampler` runs ``compile=True``:
``torch.compile`` (Inductor, static shapes) and, on a GPU, the compiled call captured into a
``torch.cuda.CUDAGraph`` the first time each input shape is met, then replayed: the input is
copied into the graph's own input buffer and the whole network runs as one launch.

Why not ``torch.compile(mode='reduce-overhead')``, which also replays CUDA graphs: its graph
trees check every call's inputs and parameters on the host, which for a network of ASID's
hundreds of small tensors costs more than the graph saves. One H200, fp16, ASID x4 on a 320x180
input, both in one run of ``basicsr benchmark --networks ASID --paths 'compile fp16' --batch 1 4``:
3.71 ms a frame that way, 3.47 ms captured here (in batches of 4: 2.60 and 2.35 ms a frame).
"""
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import torch

#: Input shapes whose graphs are kept at once; each holds its own memory pool (returned to
#: torch's caching allocator when the graph is dropped), so a folder of many sizes replays the
#: latest few and captures the others again when they come back.
MAX_GRAPHS = 4
#: Calls of the compiled network before a capture: the first compiles, the others warm
#: cuBLAS/cuDNN workspaces and Inductor's autotuned kernels outside the graph.
WARMUP_CALLS = 2


def _layout(x):
    """The memory format an input is captured in: channels-last, or contiguous (a strided view,
    a tile of a larger image, is copied into a contiguous buffer: one graph serves every such tile)."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


#: One capture at a time in the process: cuDNN's benchmark flag, set for it, is process-wide.
_CAPTURE_LOCK = threading.Lock()


@contextmanager
def _cudnn_benchmark():
    """cuDNN picks its convolution algorithms by timing them (as BasicSR's training does), for
    the warm-up and capture only: the graph keeps the chosen kernels, the caller's flag is left
    alone. One H200, ASID 320x180 fp16: 3.16 against 3.26 ms a frame (docs/speed.md). Callers
    hold :data:`_CAPTURE_LOCK` (two threads' captures would otherwise restore each other's flag)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class _Graph:
    """One captured call: its input buffer, the graph and the output it writes.

    Everything runs under ``torch.inference_mode()`` (the buffers are inference tensors, so a call
    inside or outside inference mode may refill them) and with ``x``'s GPU current, on a stream of
    that GPU (the capture would otherwise record nothing of a network on another GPU)."""

    def __init__(self, fn, x):
        with _CAPTURE_LOCK, torch.inference_mode(), torch.cuda.device(x.device):
            self.input = x.clone(memory_format=_layout(x))
            stream = torch.cuda.Stream(x.device)
            stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream), _cudnn_benchmark():  # warm-up on a side stream, as the capture recipe has it
                for _ in range(WARMUP_CALLS):
                    fn(self.input)
            torch.cuda.current_stream(x.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a reader thread of the caller may allocate while this thread captures
            with torch.cuda.graph(self.graph, stream=stream, capture_error_mode='thread_local'), _cudnn_benchmark():
                self.output = fn(self.input)

    def __call__(self, x):
        with torch.inference_mode(), torch.cuda.device(x.device):
            self.input.copy_(x)
            self.graph.replay()
        return self.output


class CompiledNetwork:
    """``net`` through ``torch.compile(dynamic=False)``; on a GPU each input shape's call is
    captured once into a CUDA graph and replayed after.

    The output of a replay is the graph's own buffer, overwritten by the next call of that
    shape: copy it before calling again (``ASIDUpsampler.run_network`` does). For inference only
    (the graph holds no backward; an input that requires grad runs the compiled network), and
    from one thread at a time (the buffers are shared: one upsampler per thread).

    Args:
        net (nn.Module): the network, already on its device, dtype and memory format, or a module
            around it (``asid_arch.inference.NetworkCall``); its outputs, a tensor or a tuple of
            tensors (or None), are the graph's buffers.
    """

    def __init__(self, net):
        self.fn = torch.compile(net, dynamic=False)
        #: (shape, dtype, device, memory format) -> _Graph, or None where the capture failed
        self.graphs = OrderedDict()

    def __call__(self, x):
        if not x.is_cuda or torch.is_grad_enabled() and x.requires_grad:
            return self.fn(x)
        key = (tuple(x.shape), x.dtype, x.device, _layout(x))
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
            while len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        graph = self.graphs[key]
        if graph is None:
            with torch.no_grad():
                return self.fn(x)
        return graph(x)

    def _capture(self, x):
        try:
            return _Graph(self.fn, x)
        except RuntimeError as err:  # never lose the images to an optimisation
            warnings.warn(f'CUDA graph capture failed for input {tuple(x.shape)} ({str(err).splitlines()[0]}); '
                          'running the compiled network without a graph for it', stacklevel=3)
            return None

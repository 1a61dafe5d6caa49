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
import warnings
from collections import OrderedDict

import torch

#: Input shapes whose graphs are kept at once; each holds its own memory pool, so a folder of
#: many sizes replays the latest few and captures the others again when they come back.
MAX_GRAPHS = 4
#: Calls of the compiled network before a capture: the first compiles, the others warm
#: cuBLAS/cuDNN workspaces and Inductor's autotuned kernels outside the graph.
WARMUP_CALLS = 2


class _Graph:
    """One captured call: its input buffer, the graph and the output it writes."""

    def __init__(self, fn, x):
        self.input = x.clone()
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):  # warm-up on a side stream, as the capture recipe has it
            for _ in range(WARMUP_CALLS):
                fn(self.input)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a reader thread of the caller may allocate while this thread captures
        with torch.cuda.graph(self.graph, capture_error_mode='thread_local'):
            self.output = fn(self.input)

    def __call__(self, x):
        self.input.copy_(x)
        self.graph.replay()
        return self.output


class CompiledNetwork:
    """``net`` through ``torch.compile(dynamic=False)``; on a GPU each input shape's call is
    captured once into a CUDA graph and replayed after.

    The output of a replay is the graph's own buffer, overwritten by the next call of that
    shape: copy it before calling again (``ASIDUpsampler.run_network`` does). Calls without
    autograd only (inference): the graph holds no backward.

    Args:
        net (nn.Module): the network, already on its device, dtype and memory format.
        cuda_graphs (bool | None): capture graphs; None (default): on a CUDA input.
    """

    def __init__(self, net, cuda_graphs=None):
        self.fn = torch.compile(net, dynamic=False)
        self.cuda_graphs = cuda_graphs
        self.graphs = OrderedDict()  # (shape, dtype, stride, device) -> _Graph, or None where capture failed

    def __call__(self, x):
        use_graphs = x.is_cuda if self.cuda_graphs is None else self.cuda_graphs
        if not use_graphs or torch.is_grad_enabled() and x.requires_grad:
            return self.fn(x)
        key = (tuple(x.shape), x.dtype, x.stride(), x.device)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
            while len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)  # frees that graph's memory pool
        self.graphs.move_to_end(key)
        graph = self.graphs[key]
        with torch.no_grad():
            return graph(x) if graph is not None else self.fn(x)

    def _capture(self, x):
        try:
            with torch.no_grad():
                return _Graph(self.fn, x)
        except RuntimeError as err:  # never lose the images to an optimisation
            warnings.warn(f'CUDA graph capture failed for input {tuple(x.shape)} ({str(err).splitlines()[0]}); '
                          'running the compiled network without a graph for it', stacklevel=3)
            return None

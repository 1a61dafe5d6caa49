"""ASID to ONNX: the export, the check of the exported file against PyTorch, its CPU time.

Used by ``basicsr export`` (:mod:`basicsr_ext.commands.export`, which says what the ONNX model
takes and gives). The network class holds no export code: :class:`ExportWrapper` expresses
``ASID.forward``'s padding with tensor arithmetic (so that the tracer records it instead of
baking in the example size) and calls the network's own :meth:`~asid_arch.asid_arch.ASID.body`.
"""
import copy
import os
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Largest max |ONNX Runtime - PyTorch| accepted for an fp32 export, in [0, 1] units
#: (1e-4 = 0.0255 of an 8-bit level). Measured: about 1e-6 for ASID and ASID-D8.
TOLERANCE = 1e-4
#: The same for ``--fp16`` (weights and activations in half precision; compared with the fp32
#: PyTorch network). 1e-2 = 2.6 8-bit levels.
FP16_TOLERANCE = 1e-2
#: Inputs of the parity check: a batch of 2 with sides that are not multiples of the window,
#: a window-multiple one and a tiny one (padded to 16 px inside the graph).
PARITY_SHAPES = ((2, 3, 37, 50), (1, 3, 64, 48), (1, 3, 7, 5))
#: Side of the input whose CPU time is printed.
TIMING_SIZE = 128
#: ONNX metadata keys written with the model (read back by ``basicsr infer --onnx``).
METADATA_PREFIX = 'asid.'


class ExportWrapper(nn.Module):
    """``ASID.forward`` for the exporter: [0, 1] RGB in, [0, 1] RGB out, any size.

    Computes the same function as ``net(x)`` (checked by :func:`parity`), with the network's own
    value mapping and body; only the padded size ``max(min_size, ceil(h / w) * w)``
    (:meth:`~asid_arch.asid_arch.ASID.padded_size`) is computed here, with tensors, so that it
    stays a function of the input's shape in the traced graph.

    Args:
        net (ASID): the network (eval mode).
        fp16 (bool): run the network in half precision; input and output stay float32.
    """

    def __init__(self, net, fp16=False):
        super().__init__()
        self.net = copy.deepcopy(net).half() if fp16 else net  # half() works in place: the caller's stays fp32
        self.fp16 = fp16

    def _padded(self, size):
        ws = self.net.window_size
        size = torch.as_tensor(size)
        return torch.clamp(torch.div(size + ws - 1, ws, rounding_mode='floor') * ws, min=self.net.min_size) - size

    def forward(self, x):
        net = self.net
        h, w = x.shape[-2], x.shape[-1]
        x = net.to_network_range(x)
        pad_h, pad_w = self._padded(h), self._padded(w)
        zero = torch.zeros_like(pad_h)
        x = F.pad(x, [zero, pad_w, zero, pad_h])
        if self.fp16:
            x = x.half()
        out = net.body(x).float()
        s = net.upscale
        return net.from_network_range(out[:, :, :h * s, :w * s])


def metadata(net):
    """What ``basicsr infer --onnx`` needs to know about the exported network (ONNX metadata)."""
    return {f'{METADATA_PREFIX}{k}': str(v) for k, v in (
        ('type', type(net).__name__), ('upscale', net.upscale), ('num_groups', net.num_groups),
        ('num_feat', net.num_feat), ('window_size', net.window_size),
        ('value_range', ','.join(map(str, net.value_range))), ('io', 'rgb [0, 1], NCHW float32'))}


def export_onnx(net, path, opset, fp16=False):
    """Write ``net`` (an ASID) to ``path`` as ONNX with dynamic batch, height and width."""
    import onnx

    wrapper = ExportWrapper(net.eval(), fp16=fp16).eval()
    example = torch.rand(1, 3, 32, 32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the tracer's notes about shape arithmetic: what we want traced
        torch.onnx.export(wrapper, (example, ), path, dynamo=False, opset_version=opset, input_names=['input'],
                          output_names=['output'], dynamic_axes={'input': {0: 'batch', 2: 'height', 3: 'width'},
                                                                 'output': {0: 'batch', 2: 'height_s', 3: 'width_s'}})
    model = onnx.load(path)
    for key, value in metadata(net).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


def session(path):
    """An ONNX Runtime session on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(os.fspath(path), options, providers=['CPUExecutionProvider'])


def parity(net, sess, shapes=PARITY_SHAPES, seed=0):
    """[(shape, max |ONNX Runtime - PyTorch|)] on random inputs of ``shapes``."""
    generator = torch.Generator().manual_seed(seed)
    results = []
    for shape in shapes:
        x = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            ref = net(x).float().numpy()
        out = sess.run(None, {'input': x.numpy()})[0]
        if out.shape != ref.shape:
            results.append((shape, float('inf')))
        else:
            results.append((shape, float(np.abs(out - ref).max())))
    return results


def cpu_times(net, sess, size=TIMING_SIZE, repeats=5):
    """Median seconds of one (1, 3, size, size) input: (ONNX Runtime, PyTorch eager), both on the CPU."""
    x = torch.rand(1, 3, size, size)
    feed = {'input': x.numpy()}

    def median(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with torch.inference_mode():
        return median(lambda: sess.run(None, feed)), median(lambda: net(x))

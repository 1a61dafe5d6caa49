"""``basicsr export``: an ASID checkpoint to ONNX, checked against PyTorch before it is kept.

::

    basicsr export --model-path net_g_latest.pth -o asid_x4.onnx [--opset 17] [--fp16]

The ONNX model takes and gives RGB in [0, 1], (N, 3, H, W) -> (N, 3, H*s, W*s), with
dynamic N, H and W: the value-range mapping, the padding to the window multiple (and to 16 px
for tiny inputs) and the crop are inside the graph. It computes what the PyTorch network
computes, without a clamp: like it, it can give values slightly outside [0, 1], to be clipped
when written as an image (``basicsr infer --onnx`` does, after averaging overlapping tiles, as
for a checkpoint). Written by the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``): on torch 2.14 it keeps H and W dynamic through the
padding arithmetic, where the dynamo exporter specialised the graph to the example input's size.

Before the file is written, ONNX Runtime (CPU) runs the model on :data:`PARITY_SHAPES` (a batch of 2,
sides that are not window multiples, a tiny 7x5 input) and compares with the PyTorch network;
above :data:`TOLERANCE` (``FP16_TOLERANCE`` for ``--fp16``) nothing is written and the exit
status is 1. Then the CPU time of one 128x128 input is printed for both, and the file is written
(atomically: :func:`basicsr_ext.common.files.write_file`). Opsets below :data:`MIN_OPSET` are
refused in one line before exporting; Ctrl-C or SIGTERM stop with one line and write nothing.

The network class holds no export code: :class:`ExportWrapper` expresses ``ASID.forward``'s
padding with tensor arithmetic (so that the tracer records it instead of baking in the example
size) and calls the network's own :meth:`~asid_arch.asid_arch.ASID.body`.
"""
import copy
import io
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from basicsr_ext.common.errors import CommandError
from basicsr_ext.common.files import write_file

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
#: Default ONNX opset.
DEFAULT_OPSET = 17
#: The lowest opset ASID exports to: opsets 9 and 10 can only pad by constant sizes, and the
#: padding to a window multiple depends on the input's size (measured with torch 2.14: opsets
#: 11 to 17 give the same model, max |ONNX Runtime - PyTorch| 4e-7).
MIN_OPSET = 11
#: ONNX metadata keys written with the model (read back by ``basicsr infer --onnx``).
METADATA_PREFIX = 'asid.'


class ExportWrapper(nn.Module):
    """``ASID.forward`` for the exporter: [0, 1] RGB in, [0, 1] RGB out, any size.

    Computes the same function as ``net(x)`` (checked by :func:`parity`); the
    padded size ``max(min_size, ceil(h / w) * w)`` is computed with tensors so that it stays
    a function of the input's shape in the traced graph.

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
        if net.value_range[0] == -1:
            x = x * 2 - 1
        pad_h, pad_w = self._padded(h), self._padded(w)
        zero = torch.zeros_like(pad_h)
        x = F.pad(x, [zero, pad_w, zero, pad_h])
        if self.fp16:
            x = x.half()
        out = net.body(x).float()
        s = net.upscale
        out = out[:, :, :h * s, :w * s]
        if net.value_range[0] == -1:
            out = (out + 1) / 2
        return out


def metadata(net):
    """What ``basicsr infer --onnx`` needs to know about the exported network (ONNX metadata)."""
    return {f'{METADATA_PREFIX}{k}': str(v) for k, v in (
        ('type', type(net).__name__), ('upscale', net.upscale), ('num_groups', net.num_groups),
        ('num_feat', net.num_feat), ('window_size', net.window_size),
        ('value_range', ','.join(map(str, net.value_range))), ('io', 'rgb [0, 1], NCHW float32'))}


def onnx_bytes(net, opset=DEFAULT_OPSET, fp16=False):
    """``net`` (an ASID) as an ONNX model with dynamic batch, height and width, and its metadata."""
    import onnx

    wrapper = ExportWrapper(net.eval(), fp16=fp16).eval()
    example = torch.rand(1, 3, 32, 32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the tracer's notes about shape arithmetic: what we want traced
        torch.onnx.export(wrapper, (example, ), buffer, dynamo=False, opset_version=opset, input_names=['input'],
                          output_names=['output'], dynamic_axes={'input': {0: 'batch', 2: 'height', 3: 'width'},
                                                                 'output': {0: 'batch', 2: 'height_s', 3: 'width_s'}})
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata(net).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def export_onnx(net, path, opset=DEFAULT_OPSET, fp16=False):
    """Write ``net`` (an ASID) to ``path`` as ONNX (:func:`onnx_bytes`), atomically; returns ``path``."""
    write_file(path, onnx_bytes(net, opset=opset, fp16=fp16))
    return path


def session(model):
    """An ONNX Runtime session on the CPU, of an ONNX file or of its bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    model = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


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


# ----------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------
def add_parser(commands):
    """Register ``export`` on the ``basicsr`` command's subparsers."""
    p = commands.add_parser('export', help='export a checkpoint to ONNX, checked against PyTorch',
                            description='Export an ASID checkpoint to ONNX ([0, 1] RGB in and out, dynamic batch, '
                            'height and width), then check it with ONNX Runtime against PyTorch.')
    p.add_argument('--model-path', required=True, metavar='CKPT',
                   help="checkpoint: BasicSR's (params / params_ema) or the authors' raw release")
    p.add_argument('-o', '--output', required=True, metavar='FILE', help='the .onnx file to write')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    p.add_argument('--fp16', action='store_true',
                   help='weights and activations in half precision (input and output stay float32)')
    p.add_argument('--scale', type=int, default=None, help='scale; must match the weights (default: from them)')
    p.add_argument('--num-groups', type=int, default=None, help='groups; must match the weights (default: from them)')
    p.add_argument('--value-range', choices=['0,1', '-1,1'], default=None,
                   help='range the network computes in (default: as the checkpoint records, see basicsr infer)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args):
    from asid_arch.checkpoint import CheckpointError, build_asid

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise CommandError(f"{e.name} is not installed: pip install 'asid-basicsr[export]' (or -e '.[export]')") \
            from None
    if args.opset < MIN_OPSET:  # before exporting: the exporter would print its whole graph, then fail
        raise CommandError(f'--opset {args.opset}: ASID exports to ONNX opset {MIN_OPSET} or later (its padding '
                           f'to a window multiple depends on the input size); the default is {DEFAULT_OPSET}')
    if os.path.exists(args.output) and not args.overwrite:
        raise CommandError(f'{args.output} exists (use --overwrite to replace it)')
    if os.path.isdir(args.output):
        raise CommandError(f'{args.output} is a folder')
    value_range = None if args.value_range is None else tuple(int(v) for v in args.value_range.split(','))
    try:
        net = build_asid(args.model_path, upscale=args.scale, num_groups=args.num_groups, value_range=value_range)
    except CheckpointError as e:
        raise CommandError(str(e)) from None
    lo, hi = net.value_range
    print(f'basicsr export: {args.model_path}: {type(net).__name__} x{net.upscale} ({net.num_groups} groups, '
          f'{net.num_feat} features, value range [{lo}, {hi}]) -> {args.output} (opset {args.opset}'
          f'{", fp16" if args.fp16 else ""})')
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    try:
        model = onnx_bytes(net, opset=args.opset, fp16=args.fp16)
        sess = session(model)
        tolerance = FP16_TOLERANCE if args.fp16 else TOLERANCE
        results = parity(net, sess)
        for shape, diff in results:
            print(f'parity {"x".join(map(str, shape))}: max |onnxruntime - pytorch| = {diff:.3g}')
        worst = max(diff for _, diff in results)
        if not worst <= tolerance:
            print(f'basicsr export: error: ONNX Runtime differs from PyTorch by {worst:.3g}, more than the '
                  f'tolerance {tolerance:g}: {args.output} not written', file=sys.stderr)
            return 1
        ort_s, torch_s = cpu_times(net, sess)
        print(f'cpu time {TIMING_SIZE}x{TIMING_SIZE}: onnxruntime {ort_s * 1000:.1f} ms, '
              f'pytorch {torch_s * 1000:.1f} ms')
        write_file(args.output, model)  # only a model that passed the check, whole or not at all
    except OSError as e:
        raise CommandError(f'cannot write {args.output}: {e.strerror or e}') from None
    except Exception as e:
        first = str(e).strip().splitlines()
        raise CommandError(f'export failed: {type(e).__name__}: {first[0] if first else ""}') from None
    print(f'wrote {args.output} (max |diff| {worst:.3g} <= {tolerance:g})')
    return 0

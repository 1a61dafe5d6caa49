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

Before the file is written, ONNX Runtime (CPU) runs the model on
:data:`~basicsr_ext.common.onnx_export.PARITY_SHAPES` (a batch of 2, sides that are not window
multiples, a tiny 7x5 input) and compares with the PyTorch network; above its ``TOLERANCE``
(``FP16_TOLERANCE`` for ``--fp16``) nothing is written and the exit status is 1. Then the CPU
time of one 128x128 input is printed for both, and the file is written (atomically:
:func:`basicsr_ext.common.files.write_file`). Opsets below
:data:`MIN_OPSET` are refused in one line before exporting;
Ctrl-C or SIGTERM stop with one line and write nothing.
The export and the check: :mod:`basicsr_ext.common.onnx_export`.
"""
import os
import sys

from basicsr_ext.commands.checkpoint_args import add_weight_overrides, value_range_of
from basicsr_ext.common.errors import CommandError
from basicsr_ext.common.files import write_file

#: Default ONNX opset.
DEFAULT_OPSET = 17
#: The lowest opset ASID exports to: opsets 9 and 10 can only pad by constant sizes, and the
#: padding to a window multiple depends on the input's size (measured with torch 2.14: opsets
#: 11 to 17 give the same model, max |ONNX Runtime - PyTorch| 4e-7).
MIN_OPSET = 11


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
    add_weight_overrides(p)
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args):
    if args.opset < MIN_OPSET:  # before exporting: the exporter would print its whole graph, then fail
        raise CommandError(f'--opset {args.opset}: ASID exports to ONNX opset {MIN_OPSET} or later (its padding '
                           f'to a window multiple depends on the input size); the default is {DEFAULT_OPSET}')
    from asid_arch.checkpoint import CheckpointError, build_asid
    from basicsr_ext.common.onnx_export import (FP16_TOLERANCE, TIMING_SIZE, TOLERANCE, cpu_times, onnx_bytes,
                                                parity, session)

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise CommandError(f"{e.name} is not installed: pip install 'asid-basicsr[export]' (or -e '.[export]')") \
            from None
    if os.path.isdir(args.output) or args.output.endswith((os.sep, '/')):
        raise CommandError(f'{args.output} is a folder: name the .onnx file to write')
    if os.path.exists(args.output) and not args.overwrite:
        raise CommandError(f'{args.output} exists (use --overwrite to replace it)')
    value_range = value_range_of(args)
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

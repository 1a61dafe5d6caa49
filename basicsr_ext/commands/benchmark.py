"""``basicsr benchmark``: ASID, ASID-D8 and SwinIR-light side by side, plain vs fast paths.

::

    basicsr benchmark                       # inference table on whatever device is there
    basicsr benchmark --train               # + training iterations/s through `basicsr train`
    basicsr benchmark --json results.json   # the same figures for machines

Inference rows: parameters, multiply-adds for the frame (``--size``, default 320x180 -> 1280x720
on a GPU, 128x128 on a CPU), latency (median of ``--repeat`` warm runs; CUDA events on a GPU) of
a call and per frame (``--batch 1 4``: the compiled paths also with 4 frames a call),
throughput in output megapixels/s, peak memory (GPU), and the largest deviation from the plain
fp32 output of the same network. Paths: ``plain`` (eager, the definition), and as
:class:`asid_arch.ASIDUpsampler` runs the network (``basicsr infer``): ``default`` (its
defaults for one image: fp32 on channels-last tensors on a CPU, fp16 on a GPU), ``compile``
(``compile=True``), and on a GPU ``fp16`` (network and input cast to half, ``basicsr infer``'s
default there) and ``compile fp16`` (both; with the fused Triton kernels of
:mod:`asid_arch.kernels`, ``compile fp16 unfused`` without them).

``--train`` runs BasicSR's own ``train_pipeline`` (``basicsr train``) on a generated paired
data set at the recipe's batch 16, LR patch 64 (data loading, prefetching and the optimizer included): ``plain``
is BasicSR's ``SRModel``, ``compile`` ASIDModel with ``train: compile: true`` (on a GPU the whole
step is one CUDA graph), ``compile bf16`` the same under bf16 autocast (GPU only; with the fused
kernels, forward and backward, ``compile bf16 unfused`` without them, ``train: kernels: false``); it reports
iterations/s between ``--train-warmup`` and the last iteration. ``--train-opt FILE ...`` times
option files' own training instead (the Real-ESRGAN stages: their data, batch, model and losses)
and splits an iteration into ``feed_data`` (the degradations), ``optimize_parameters`` and the
rest. ``--large`` measures a
960x540 -> 3840x2160 frame through :class:`asid_arch.ASIDUpsampler` (whole image or tiles).

``--data`` measures the training data sets instead, on the same pairs (``--data-gt/--data-lq``,
default: generated 480 px pairs like DIV2K's sub-images): BasicSR's ``PairedImageDataset``
reading PNG files, the same from an LMDB made of them in a temporary folder (BasicSR's
``make_lmdb_from_imgs``), and ``InMemoryPairedImageDataset``; samples/s of one process calling
the data set (what one loader worker delivers), and with ``--data-workers N`` through a
DataLoader of N workers, side by side in one table.
"""
import json
import os
import sys

from basicsr_ext.common.errors import CommandError
from basicsr_ext.common.files import write_file

#: The networks measured side by side (built in :mod:`basicsr_ext.commands.benchmark_runs`).
NETWORK_NAMES = ('ASID', 'ASID-D8', 'SwinIR-light')

#: Ways of running measured: inference ('plain'; 'default': what ``basicsr infer`` runs for one image,
#: fp32 channels-last on a CPU, fp16 on a GPU; 'compile', and on a GPU 'fp16', 'compile fp16' and
#: 'compile fp16 unfused', without the fused kernels) and training ('plain', 'compile', and on a GPU
#: 'compile bf16', and 'compile bf16 unfused' without the fused kernels).
PATHS = ('plain', 'default', 'compile', 'fp16', 'compile fp16', 'compile fp16 unfused', 'compile bf16',
         'compile bf16 unfused')
#: Paths measured on a GPU only (fp16 kernels, and the fused Triton kernel, need one).
GPU_PATHS = ('fp16', 'compile fp16', 'compile fp16 unfused', 'compile bf16', 'compile bf16 unfused')


def parse_size(text):
    w, h = (int(v) for v in text.lower().split('x'))
    return w, h


# ----------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------
def _fmt(value, spec):
    return '-' if value is None else format(value, spec)


def print_data_table(data, out):
    rows = data['rows']
    print(f'\ntraining data, x{data["scale"]}, HR patch {data["gt_size"]}, flips and rotations, {rows[0]["pairs"]} '
          f'pairs of {data["gt"]}: samples/s ({data["samples"]} samples)', file=out)
    loaders = [f'{lo["workers"]} workers (each)' for lo in rows[0]['loaders']]
    print(f'{"dataset":<27} {"backend":<7} {"build s":>8} {"1 process":>10} {"vs disk":>8} {"memory GB":>10}'
          + ''.join(f' {h:>22}' for h in loaders), file=out)
    disk = rows[0]['samples_per_s']
    for r in rows:
        cells = ''.join(f' {lo["samples_per_s"]:>10.1f} ({_fmt(lo["per_worker"], ".1f"):>8})' for lo in r['loaders'])
        print(f'{r["dataset"]:<27} {r["backend"]:<7} {r["build_s"]:>8.2f} {r["samples_per_s"]:>10.1f} '
              f'{r["samples_per_s"] / disk:>7.2f}x {_fmt(r["memory_gb"], ".3f"):>10}{cells}', file=out)


def print_tables(result, out=None):
    out = out or sys.stdout
    print(f'\ndevice: {result["device"]}, torch {result["torch"]}', file=out)
    if result.get('data'):
        print_data_table(result['data'], out)
    rows = result.get('inference')
    if rows:
        print(f'\ninference, x4, {rows[0]["input"]} -> {rows[0]["output"]}, fp32 input; ms: one call, '
              f'ms/frame: one call / batch', file=out)
        print(f'{"network":<13} {"path":<13} {"batch":>5} {"params":>9} {"GMACs":>7} {"ms":>9} {"ms/frame":>9} '
              f'{"Mpx/s":>8} {"peak GB":>8} {"max|diff|":>9}  target', file=out)
        for r in rows:
            target = '' if r['target_ms'] is None else (
                f'<= {r["target_ms"]:g} ms/frame: {"met" if r["ms_per_frame"] <= r["target_ms"] else "missed"}')
            print(f'{r["network"]:<13} {r["path"]:<13} {r["batch"]:>5} {r["params"]:>9,} {r["gmacs"]:>7.1f} '
                  f'{r["latency_ms"]:>9.2f} {r["ms_per_frame"]:>9.2f} {r["mpix_per_s"]:>8.2f} '
                  f'{_fmt(r["peak_mem_gb"], ".3f"):>8} {r["max_abs_diff"]:>9.1e}  {target}', file=out)
        swin = [r for r in rows if r['network'] == 'SwinIR-light' and r['path'] == 'plain']
        if swin:
            for r in rows:
                if r['network'] == 'ASID' and r['batch'] == 1:
                    print(f'ASID {r["path"]}: {r["latency_ms"] / swin[0]["latency_ms"]:.3f}x SwinIR-light\'s time',
                          file=out)
    for r in result.get('large', []):
        print(f'\nASID x4 960x540 -> 3840x2160 ({r["precision"]}, {r["plan"]}): {r["latency_ms"]:.0f} ms, '
              f'peak {_fmt(r["peak_mem_gb"], ".2f")} GB', file=out)
    option_files = [r for r in result.get('training', []) if 'model' in r]
    for r in option_files:
        rest = 1e3 / r['iters_per_s'] - r['feed_data_ms'] - r['optimize_ms']
        print(f'\ntraining with {r["path"]} ({r["model"]}, {r["network"]} x4, batch {r["batch"]}, LR patch '
              f'{r["lr_patch"]}, {r["workers"]} loader workers): {r["iters_per_s"]:.2f} it/s, peak '
              f'{_fmt(r["peak_mem_gb"], ".2f")} GB; per iteration: feed_data {r["feed_data_ms"]:.1f} ms, '
              f'optimize_parameters {r["optimize_ms"]:.1f} ms, rest {rest:.1f} ms', file=out)
    if result.get('training') and not option_files:
        first = result['training'][0]
        print(f'\ntraining through basicsr train, ASID x4, batch {first["batch"]}, LR patch {first["lr_patch"]}',
              file=out)
        for r in result['training']:
            print(f'{r["path"]:<13} {r["iters_per_s"]:>7.2f} it/s   peak {_fmt(r["peak_mem_gb"], ".2f")} GB   '
                  f'first iteration after {r["first_iter_s"]:.1f} s   {r["workers"]} loader workers', file=out)


def add_parser(commands, train_command=None):
    """Register ``basicsr benchmark``; ``train_command(argv)`` runs ``basicsr train`` (for ``--train``)."""
    p = commands.add_parser('benchmark', help='params, MACs, latency, memory: ASID vs SwinIR-light, plain vs fast',
                            description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='auto', help='cpu, cuda or auto (default)')
    p.add_argument('--size', type=parse_size, default=None, metavar='WxH',
                   help='LR input size (default: 320x180 on a GPU, 128x128 on a CPU)')
    p.add_argument('--networks', nargs='+', choices=NETWORK_NAMES, default=list(NETWORK_NAMES))
    p.add_argument('--paths', nargs='+', choices=PATHS, default=list(PATHS),
                   help='which ways of running to measure (default: all that the device supports)')
    p.add_argument('--batch', type=int, nargs='+', default=[1], metavar='N',
                   help='frames per call; batches above 1 for the compiled ASID paths (as basicsr infer --batch '
                   'runs video frames) (default: 1)')
    p.add_argument('--repeat', type=int, default=None, help='timed runs (default: 50 on a GPU, 9 on a CPU)')
    p.add_argument('--warmup', type=int, default=3, help='untimed runs first (default: 3)')
    p.add_argument('--large', action='store_true', help='also a 960x540 -> 3840x2160 frame (memory)')
    p.add_argument('--train', action='store_true', help='also training iterations/s through basicsr train')
    p.add_argument('--train-opt', nargs='+', default=None, metavar='FILE',
                   help='with --train: time these option files\' own training instead (e.g. '
                   'options/train_ASID_x4_realesrnet.yml and _realesrgan.yml, their data prepared under the '
                   'current directory): their batch, workers and model; no validation, checkpoints or '
                   'pretrained weights; also the time per iteration in feed_data (where the Real-ESRGAN models '
                   'degrade the batch) and in optimize_parameters')
    p.add_argument('--train-iters', type=int, default=300, help='default: 300')
    p.add_argument('--train-warmup', type=int, default=100, help='iterations before the clock starts (default 100)')
    p.add_argument('--train-batch', type=int, default=16, help='batch size (default: 16, the recipe\'s)')
    p.add_argument('--train-patch', type=int, default=64, help='LR patch size (default: 64, the recipe\'s)')
    p.add_argument('--train-workers', type=int, default=6, help='data loader workers (default: 6)')
    p.add_argument('--train-profile', default=None, metavar='PREFIX',
                   help='write a torch profiler table of the iterations just before the timed ones of each training '
                        'run to PREFIX.<path>.txt (with a --train-warmup long enough: the command says how long)')
    p.add_argument('--data', action='store_true',
                   help='measure the training data sets instead (disk, LMDB, in memory: samples/s on the same pairs)')
    p.add_argument('--data-gt', default=None, metavar='DIR', help='HR folder (default: generated 480 px pairs)')
    p.add_argument('--data-lq', default=None, metavar='DIR', help='LR folder, with --data-gt')
    p.add_argument('--data-scale', type=int, default=4, help='default: 4')
    p.add_argument('--data-patch', type=int, default=256, help="HR patch, gt_size (default: 256, the recipe's)")
    p.add_argument('--data-count', type=int, default=32, help='pairs generated without --data-gt (default: 32)')
    p.add_argument('--data-samples', type=int, default=400, help='samples timed per measurement (default: 400)')
    p.add_argument('--data-workers', type=int, nargs='*', default=[], metavar='N',
                   help='also through a DataLoader of N workers, batch 16 (e.g. --data-workers 1 4)')
    p.add_argument('--json', default=None, metavar='FILE', help='also write the figures as JSON')
    p.add_argument('--profile', action='store_true',
                   help='only: where a frame\'s time goes, block by block, for the ASID networks of --networks at '
                   '--size (GPU: fp16, each block compiled and replayed as a CUDA graph; CPU: fp32, eager)')
    p.add_argument('--stop-check', action='store_true',
                   help='only: the time DDP ranks spend each iteration agreeing on a stop (run under torchrun)')
    p.set_defaults(func=run, train_command=train_command)


def run(args):
    if args.data:
        return run_data(args)
    import torch

    from asid_arch.runtime import resolve_device
    from basicsr_ext.commands.benchmark_runs import (bench_inference, bench_large, bench_stop_check, bench_training,
                                                     check_training_args)
    check_training_args(args)
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:  # 'cuda' without a GPU, a misspelt device
        raise CommandError(f'--device {args.device}: {str(e).splitlines()[0]}') from None
    gpu_only = [path for path in args.paths if path in GPU_PATHS]
    if device.type == 'cpu' and gpu_only and set(gpu_only) == set(args.paths) and not (args.train or args.profile):
        raise CommandError(f'--paths {" ".join(gpu_only)}: paths of a GPU only; on the CPU: plain, default, compile')
    args.size = args.size or ((320, 180) if device.type == 'cuda' else (128, 128))
    args.repeat = args.repeat or (50 if device.type == 'cuda' else 9)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.stop_check:
        return bench_stop_check(device, args.repeat if args.repeat and args.repeat > 50 else 2000, log)
    if args.profile:
        return run_profile(args, device, log)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    result = {'device': name, 'torch': torch.__version__, 'inference': bench_inference(args, device, log)}
    if args.large:
        result['large'] = bench_large(device, log)
    if args.train:
        result['training'] = bench_training(args, device, log)
    print_tables(result)
    if args.json:
        write_file(args.json, json.dumps(result, indent=2).encode())
    return 0


def run_profile(args, device, log):
    """``basicsr benchmark --profile``: :mod:`basicsr_ext.commands.profile_blocks`'s table per ASID network."""
    import torch

    from basicsr_ext.commands.benchmark_runs import NETWORKS
    from basicsr_ext.commands.profile_blocks import print_profile, profile_blocks
    names = [n for n in args.networks if n.startswith('ASID')]
    if not names:
        raise CommandError('--profile measures ASID and ASID-D8: name one with --networks')
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    result = {'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU',
              'torch': torch.__version__, 'profiles': []}
    for name in names:
        torch.manual_seed(0)
        result['profiles'].append(profile_blocks(NETWORKS[name](), args.size, device, dtype, args.repeat, log))
    print(f'\ndevice: {result["device"]}, torch {result["torch"]}')
    for profile in result['profiles']:
        print_profile(profile, sys.stdout)
    if args.json:
        write_file(args.json, json.dumps(result, indent=2).encode())
    return 0


def run_data(args):
    """``basicsr benchmark --data``: the training data sets' table (no networks)."""
    import torch

    from basicsr_ext.commands.benchmark_runs import bench_data
    from basicsr_ext.common import resources
    if bool(args.data_gt) != bool(args.data_lq):
        raise CommandError('--data-gt and --data-lq go together')
    for folder in filter(None, (args.data_gt, args.data_lq)):
        if not os.path.isdir(folder):
            raise CommandError(f'{folder}: no such folder')
    if args.data_gt:  # what basicsr train checks of a training set, before anything is built or timed
        from basicsr_ext.common.datacheck import DataError, check_paired
        try:
            check_paired({'dataroot_gt': args.data_gt, 'dataroot_lq': args.data_lq, 'gt_size': args.data_patch},
                         args.data_scale, '--data-gt/--data-lq', is_train_phase=True)
        except DataError as e:
            raise CommandError(str(e)) from None

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    result = {'device': f'CPU ({resources.usable_cores()} usable cores)', 'torch': torch.__version__,
              'data': bench_data(args, log)}
    print_tables(result)
    if args.json:
        write_file(args.json, json.dumps(result, indent=2).encode())
    return 0

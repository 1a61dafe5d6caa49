"""The measurements of ``basicsr benchmark`` (:mod:`basicsr_ext.commands.benchmark`): inference
latency, multiply-adds and memory of ASID, ASID-D8 and SwinIR-light, training iterations/s
through ``basicsr train``, and samples/s of the training data sets (``--data``)."""
import contextlib
import copy
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from asid_arch import ASID, ASIDUpsampler


class SwinIRLight(torch.nn.Module):
    """BasicSR's SwinIR, lightweight configuration (embed 60, depths 6x4, pixelshuffledirect).

    BasicSR's SwinIR needs sides that are multiples of its window (8); as SwinIR's own test
    script does, the input is reflect-padded to one and the output cropped.
    """

    def __init__(self, upscale=4):
        super().__init__()
        from basicsr.archs.swinir_arch import SwinIR
        self.upscale = upscale
        self.net = SwinIR(upscale=upscale, in_chans=3, img_size=64, window_size=8, img_range=1.,
                          depths=[6, 6, 6, 6], embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2,
                          upsampler='pixelshuffledirect', resi_connection='1conv')

    def forward(self, x):
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, -w % 8, 0, -h % 8), mode='reflect')
        return self.net(x)[..., :h * self.upscale, :w * self.upscale]


NETWORKS = {
    'ASID': lambda: ASID(upscale=4, num_groups=3),
    'ASID-D8': lambda: ASID(upscale=4, num_groups=8),
    'SwinIR-light': SwinIRLight,
}


def multiply_adds(net, x):
    """Multiply-adds of one forward (matrix products and convolutions), counted on the meta device."""
    meta = copy.deepcopy(net).to('meta')
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(x.to('meta'))
    return counter.get_total_flops() / 2


def time_forward(fn, x, device, repeat, warmup):
    """Median seconds of ``fn(x)`` over ``repeat`` warm runs, and peak GPU memory in bytes (None on CPU)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeat):
            if device.type == 'cuda':
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else None
    return statistics.median(times), peak


def inference_paths(name, net, device):
    """(path name, callable) pairs to time for one network: the fast ones as ``basicsr infer`` runs them."""
    paths = [('plain', net)]
    if name.startswith('ASID'):
        paths.append(('default', ASIDUpsampler(net, device=device, tile=0).run_network))
        variants = [('compile', 'fp32', True, 'auto')]
        if device.type == 'cuda':
            variants += [('fp16', 'fp16', False, 'auto'), ('compile fp16', 'fp16', True, 'auto'),
                         ('compile fp16 unfused', 'fp16', True, False)]
        for path, precision, compiled, kernels in variants:
            up = ASIDUpsampler(net, device=device, precision=precision, tile=0, compile=compiled, kernels=kernels)
            paths.append((path, up.run_network))
    return paths


#: Issue 26's targets for 320x180 -> 1280x720, set for one H200 (other GPUs' rows are marked against
#: them too), ms a frame: (one frame a call, 4 or more frames a call); 2 or 3 a call get the first.
TARGETS_720P_MS = {'ASID': (3.0, 2.0), 'ASID-D8': (7.0, 5.0)}


def target_ms(name, batch, device, size):
    """A row's target in ms a frame; None for another network, device or frame size."""
    if device.type != 'cuda' or tuple(size) != (320, 180) or name not in TARGETS_720P_MS:
        return None
    one, batched = TARGETS_720P_MS[name]
    return batched if batch >= 4 else one


def bench_inference(args, device, log):
    w, h = args.size
    nets = []
    for name in args.networks:
        torch.manual_seed(0)
        net = NETWORKS[name]().eval().to(device)
        x = torch.rand(1, 3, h, w, device=device)
        nets.append((name, net, sum(p.numel() for p in net.parameters()), multiply_adds(net, x)))
    rows = []
    # eager paths first: compiling leaves the process changed (on a CPU, eager SwinIR-light ran
    # 1.5x faster after a compilation), which would flatter the eager rows measured after it
    for compiled_phase in (False, True):
        for name, net, params, macs in nets:
            repeat = args.repeat if name != 'SwinIR-light' or device.type == 'cuda' else max(3, args.repeat // 3)
            for batch in args.batch:
                if batch > 1 and not (compiled_phase and name.startswith('ASID')):
                    continue  # frames in batches: how the compiled path runs video (basicsr infer --batch)
                x = torch.rand(batch, 3, h, w, device=device, generator=torch.Generator(device).manual_seed(0))
                with torch.no_grad():
                    reference = net(x).float()
                for path, fn in inference_paths(name, net, device):
                    if path not in args.paths or ('compile' in path) != compiled_phase:
                        continue
                    log(f'{name} {path} batch {batch}: timing ({"compiling first, " if compiled_phase else ""}'
                        f'{repeat} runs)')
                    seconds, peak = time_forward(fn, x, device, repeat, args.warmup)
                    with torch.no_grad():
                        deviation = float((fn(x).float() - reference).abs().max())
                    rows.append({'network': name, 'path': path, 'batch': batch, 'params': params,
                                 'gmacs': macs / 1e9, 'input': f'{w}x{h}', 'output': f'{w * 4}x{h * 4}',
                                 'latency_ms': seconds * 1000, 'ms_per_frame': seconds * 1000 / batch,
                                 'mpix_per_s': batch * (w * 4) * (h * 4) / seconds / 1e6,
                                 'peak_mem_gb': None if peak is None else peak / 2**30, 'max_abs_diff': deviation,
                                 'target_ms': target_ms(name, batch, device, (w, h))})
                    log(f'{name} {path} batch {batch}: {seconds * 1000:.2f} ms ({seconds * 1000 / batch:.2f} a '
                        f'frame), max|diff| {deviation:.1e}')  # kept if the run is cut
    order = {name: i for i, name in enumerate(args.networks)}
    return sorted(rows, key=lambda r: (order[r['network']], args.paths.index(r['path']), r['batch']))


def bench_large(device, log):
    """ASID x4 on a 960x540 frame (-> 3840x2160) through ASIDUpsampler, as ``basicsr infer`` runs it."""
    rows = []
    for tile in (None, 256):
        up = ASIDUpsampler(ASID(upscale=4), device=device, tile=tile, tile_overlap=24)
        img = (np.random.default_rng(0).random((540, 960, 3)) * 255).astype(np.uint8)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        up.upscale(img)  # warm
        t0 = time.perf_counter()
        up.upscale(img)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None
        plan = up.describe_plan(540, 960)
        log(f'ASID 960x540 -> 3840x2160, {up.precision}, {plan}: {seconds * 1000:.0f} ms')
        rows.append({'network': 'ASID', 'precision': up.precision, 'plan': plan, 'latency_ms': seconds * 1000,
                     'peak_mem_gb': peak})
    return rows


# ----------------------------------------------------------------------------------------
# training through `basicsr train`
# ----------------------------------------------------------------------------------------
def make_train_data(root, count=64, hr_size=320, scale=4, seed=0):
    """``root/HR`` and ``root/LR``: smooth random colour images and their x4 area-downscaled partners."""
    import cv2
    rng = np.random.default_rng(seed)
    for sub in ('HR', 'LR'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(count):
        low = rng.random((hr_size // 16, hr_size // 16, 3)).astype(np.float32)
        hr = cv2.resize(low, (hr_size, hr_size), interpolation=cv2.INTER_CUBIC)
        hr = np.clip((hr + rng.normal(0, 0.03, hr.shape)) * 255, 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(root, 'HR', f'{i:04d}.png'), hr)
        lr = cv2.resize(hr, (hr_size // scale, hr_size // scale), interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(root, 'LR', f'{i:04d}.png'), lr)


def train_options(data, name, switches, iters, device, workers, batch=16, lr_patch=64):
    """The recipe's options; ``switches``: None for BasicSR's SRModel, else ASIDModel's ``train.compile/precision``."""
    cuda = device.type == 'cuda'
    return {
        'name': name, 'model_type': 'SRModel' if switches is None else 'ASIDModel', 'scale': 4,
        'num_gpu': 1 if cuda else 0, 'manual_seed': 0,
        'datasets': {'train': {
            'name': 'bench', 'type': 'PairedImageDataset', 'dataroot_gt': f'{data}/HR', 'dataroot_lq': f'{data}/LR',
            'io_backend': {'type': 'disk'}, 'gt_size': lr_patch * 4, 'use_hflip': True, 'use_rot': True,
            'use_shuffle': True,
            'num_worker_per_gpu': workers, 'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 100,
            'persistent_workers': workers > 0, 'pin_memory': cuda, 'prefetch_mode': 'cuda' if cuda else None}},
        'network_g': {'type': 'ASID', 'upscale': 4, 'num_groups': 3},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {**(switches or {}),
                  # the GPU recipe's (options/train_ASID_x4_BSDS200.yml) one-kernel update
                  'optim_g': {'type': 'AdamW', 'lr': 5e-4, 'weight_decay': 1e-4, 'betas': [0.9, 0.999],
                              **({'fused': True} if cuda else {})},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [iters], 'gamma': 0.5},
                  'total_iter': iters, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'logger': {'print_freq': max(1, iters // 5), 'save_checkpoint_freq': 10**9, 'use_tb_logger': False},
    }


def time_training(opt_file, workdir, iters, warmup, device, train, profile_file=None, breakdown=False):
    """Run ``train(['-opt', opt_file])`` (``basicsr train``, which :mod:`basicsr_ext.commands.cli` hands to
    :func:`add_parser`) in this process; returns iterations/s after ``warmup`` iterations, peak memory
    (GB), the seconds from the command's start to the end of the first iteration (compilation), and
    with ``breakdown`` the seconds per timed iteration spent in the model's ``feed_data`` (where
    RealESRNetModel / RealESRGANModel degrade the batch) and ``optimize_parameters``, else None.

    Only measurement is added, to the model instance BasicSR's ``train_pipeline`` builds (shown to
    this run by :func:`basicsr_ext.patches.runs.models_built`; BasicSR's classes and functions are
    left alone): its ``optimize_parameters`` reads the clock (after a device synchronisation) at the end of
    iteration ``warmup`` and of the last one; with ``breakdown``, the timed iterations' ``feed_data``
    and ``optimize_parameters`` are each timed between synchronisations (which the Real-ESRGAN
    models' ``feed_data`` makes anyway). With ``profile_file``, the :data:`PROFILED_ITERS`
    iterations that end 5 before ``warmup`` (outside the timed ones) run under the torch profiler,
    whose table of kernels (GPU) or operators (CPU) is written there.
    """
    from basicsr_ext.patches.pipeline import terminal_quiet_below_warning
    from basicsr_ext.patches.runs import models_built
    stamps, spent = {}, {'feed_data': 0., 'optimize_parameters': 0.}
    profiled = range(warmup - 5 - PROFILED_ITERS, warmup - 5) if profile_file else range(0)
    profiler = None

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    def timing():
        return breakdown and warmup in stamps and iters not in stamps

    def spend(name, function, *args):
        if not timing():
            return function(*args)
        sync()
        started = time.perf_counter()
        result = function(*args)
        sync()
        spent[name] += time.perf_counter() - started
        return result

    def instrument(model):
        optimize, feed_data = model.optimize_parameters, model.feed_data

        def optimize_parameters(current_iter):
            nonlocal profiler
            if current_iter == profiled.start:
                profiler = start_profiler(device)
            spend('optimize_parameters', optimize, current_iter)
            if profiler is not None and current_iter == profiled.stop - 1:
                write_profile(profiler, profile_file, device, len(profiled))
                profiler = None
            if current_iter in (1, warmup, iters):
                sync()
                stamps[current_iter] = time.perf_counter()

        model.optimize_parameters = optimize_parameters
        model.feed_data = lambda data: spend('feed_data', feed_data, data)

    cwd = os.getcwd()
    # basicsr train points torch.compile's caches into its experiments/ (here the temporary folder,
    # removed at the end); what this process compiles afterwards goes where it went before
    caches = {key: os.environ.get(key) for key in ('TORCHINDUCTOR_CACHE_DIR', 'TRITON_CACHE_DIR')}
    try:
        os.chdir(workdir)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        stamps[0] = time.perf_counter()
        # the run's INFO lines stay in its log file: the terminal gets the benchmark's own lines,
        # the run's warnings and errors, and whether it used the fused kernels
        with models_built(instrument), terminal_quiet_below_warning(keep=('train.kernels',)):
            if train(['-opt', opt_file]) != 0:
                raise RuntimeError(f'basicsr train -opt {opt_file} failed')
    finally:
        os.chdir(cwd)
        for key, value in caches.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None
    split = {k: v / (iters - warmup) for k, v in spent.items()} if breakdown else None
    return (iters - warmup) / (stamps[iters] - stamps[warmup]), peak, stamps[1] - stamps[0], split


#: Training iterations that ``--train-profile`` records.
PROFILED_ITERS = 20


def start_profiler(device):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CUDA] if device.type == 'cuda' else [ProfilerActivity.CPU]
    profiler = profile(activities=activities)
    profiler.__enter__()
    return profiler


def write_profile(profiler, path, device, iterations):
    """Stop ``profiler`` and write its table (the GPU's kernels, or CPU operators) to ``path``."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    profiler.__exit__(None, None, None)
    key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    table = profiler.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=100)
    with open(path, 'w') as f:
        f.write(f'{iterations} training iterations\n{table}')


def check_training_args(args):
    """SystemExit before anything is measured for arguments ``--train`` cannot run with."""
    if args.train_profile and args.train_warmup < PROFILED_ITERS + 10:  # the CUDA graph, captured at 4, profiled
        raise SystemExit(f'--train-profile needs --train-warmup >= {PROFILED_ITERS + 10}')


def option_file_run(path, workdir, name, iters, device):
    """The options of ``path`` (e.g. a Real-ESRGAN stage) as a timed run: ``iters`` iterations on one
    device, the training phase only (no validation, checkpoints, TensorBoard or pretrained weights);
    its data paths, relative to the current directory, made absolute (the run goes in ``workdir``)."""
    from basicsr.archs.vgg_arch import VGG_PRETRAIN_PATH

    from basicsr_ext.common.optionfile import read_options
    opt = read_options(path)
    opt.update(name=name, num_gpu=1 if device.type == 'cuda' else 0)
    opt.pop('val', None)
    opt['datasets'] = {'train': opt['datasets']['train']}
    for key in ('dataroot_gt', 'dataroot_lq', 'meta_info', 'meta_info_file'):
        if opt['datasets']['train'].get(key):
            opt['datasets']['train'][key] = os.path.abspath(os.path.expanduser(opt['datasets']['train'][key]))
    opt['train']['total_iter'] = iters
    opt['path'] = {**(opt.get('path') or {}), 'pretrain_network_g': None, 'resume_state': None}
    opt['logger'] = {'print_freq': max(1, iters // 5), 'save_checkpoint_freq': 10**9, 'use_tb_logger': False}
    vgg = os.path.abspath(VGG_PRETRAIN_PATH)  # BasicSR reads it relative to the working directory
    if os.path.isfile(vgg) and not os.path.exists(os.path.join(workdir, VGG_PRETRAIN_PATH)):
        os.makedirs(os.path.dirname(os.path.join(workdir, VGG_PRETRAIN_PATH)), exist_ok=True)
        os.symlink(vgg, os.path.join(workdir, VGG_PRETRAIN_PATH))
    train = opt['datasets']['train']
    return opt, train['batch_size_per_gpu'], opt.get('gt_size', train.get('gt_size', 0)) // opt['scale'], \
        train.get('num_worker_per_gpu', 0)


def bench_training(args, device, log):
    """``--train``: the training rows, each run in one temporary folder (data, option files,
    ``experiments/``) that is removed at the end, also when a run fails."""
    workdir = tempfile.mkdtemp(prefix='asid_bench_')
    try:
        if args.train_opt:
            return [bench_option_file(path, workdir, args, device, log) for path in args.train_opt]
        return bench_training_paths(args, workdir, device, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bench_training_paths(args, workdir, device, log):
    """ASID x4 on generated data through ``basicsr train``, one row for each training path of ``--paths``."""
    import yaml
    rows = []
    data = os.path.join(workdir, 'data')
    make_train_data(data)
    variants = [('plain', None), ('compile', {'compile': True})]
    if device.type == 'cuda':
        variants += [('compile bf16', {'compile': True, 'precision': 'bf16'}),
                     ('compile bf16 unfused', {'compile': True, 'precision': 'bf16', 'kernels': False})]
    for label, switches in variants:
        if label not in args.paths:
            continue
        torch._dynamo.reset()  # each run compiles afresh, as a `basicsr train` process does
        name = f'bench_{label.replace(" ", "_")}'
        opt_file = os.path.join(workdir, f'{name}.yml')
        with open(opt_file, 'w') as f:
            yaml.safe_dump(train_options(data, name, switches, args.train_iters, device, args.train_workers,
                                         args.train_batch, args.train_patch), f)
        log(f'training ASID x4 ({label}) through basicsr train: {args.train_iters} iterations')
        profile_file = None
        if args.train_profile:
            profile_file = f'{args.train_profile}.{label.replace(" ", "_")}.txt'
        its, peak, startup, _ = time_training(opt_file, workdir, args.train_iters, args.train_warmup, device,
                                              args.train_command, profile_file)
        rows.append({'network': 'ASID', 'path': label, 'batch': args.train_batch, 'lr_patch': args.train_patch,
                     'iters_per_s': its, 'first_iter_s': startup, 'peak_mem_gb': peak,
                     'workers': args.train_workers})
        log(f'training ASID x4 ({label}): {its:.2f} it/s, first iteration after {startup:.1f} s'
            + ('' if peak is None else f', peak {peak:.2f} GB'))  # each figure as soon as it exists
    return rows


def bench_option_file(path, workdir, args, device, log):
    """``--train-opt``: iterations/s of an option file's own training, and where an iteration's time goes."""
    import yaml
    from basicsr.utils.options import ordered_yaml
    label = os.path.splitext(os.path.basename(path))[0]
    opt, batch, lr_patch, workers = option_file_run(path, workdir, f'bench_{label}', args.train_iters, device)
    opt_file = os.path.join(workdir, f'bench_{label}.yml')
    with open(opt_file, 'w') as f:
        yaml.dump(opt, f, Dumper=ordered_yaml()[1])  # the order of the file, as BasicSR reads it
    log(f'training with {path} ({opt["model_type"]}) through basicsr train: {args.train_iters} iterations')
    torch._dynamo.reset()
    profile_file = f'{args.train_profile}.{label}.txt' if args.train_profile else None
    its, peak, startup, split = time_training(opt_file, workdir, args.train_iters, args.train_warmup, device,
                                              args.train_command, profile_file, breakdown=True)
    row = {'network': opt['network_g']['type'], 'path': label, 'model': opt['model_type'], 'batch': batch,
           'lr_patch': lr_patch, 'iters_per_s': its, 'first_iter_s': startup, 'peak_mem_gb': peak,
           'workers': workers, 'feed_data_ms': split['feed_data'] * 1e3,
           'optimize_ms': split['optimize_parameters'] * 1e3}
    log(f'training with {label}: {its:.2f} it/s; per iteration feed_data {row["feed_data_ms"]:.1f} ms, '
        f'optimize_parameters {row["optimize_ms"]:.1f} ms, the rest (waiting for data, logging) '
        f'{1e3 / its - row["feed_data_ms"] - row["optimize_ms"]:.1f} ms')
    return row


# ----------------------------------------------------------------------------------------
# training data sets: --data
# ----------------------------------------------------------------------------------------
#: The data sets ``--data`` compares: (label, dataset type, io backend).
DATA_SETS = (('disk', 'PairedImageDataset', 'disk'), ('lmdb', 'PairedImageDataset', 'lmdb'),
             ('memory', 'InMemoryPairedImageDataset', 'disk'))


def make_data_lmdbs(gt_dir, lq_dir, workdir):
    """LMDBs of the pairs of ``gt_dir``/``lq_dir`` (keyed by the HR names, as BasicSR's tools do)."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    from basicsr_ext.common.datacheck import paired_paths
    pairs = paired_paths({'dataroot_gt': gt_dir, 'dataroot_lq': lq_dir})
    keys = [os.path.splitext(os.path.basename(p['gt_path']))[0] for p in pairs]
    lmdbs = []
    for folder, key in ((gt_dir, 'gt_path'), (lq_dir, 'lq_path')):
        files = [os.path.relpath(p[key], folder) for p in pairs]
        size = sum(os.path.getsize(p[key]) for p in pairs)
        lmdb_path = os.path.join(workdir, f'{"HR" if key == "gt_path" else "LR"}.lmdb')
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            make_lmdb_from_imgs(folder, lmdb_path, files, keys, map_size=size * 10 + (64 << 20))
        lmdbs.append(lmdb_path)
    return lmdbs


def samples_per_second(dataset, samples, seed=0):
    """Samples/s of ``dataset[i]`` for ``samples`` random indices, in this process (after 3 untimed)."""
    import random
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(dataset), samples + 3)
    random.seed(seed)
    for i in indices[:3]:
        dataset[int(i)]
    t0 = time.perf_counter()
    for i in indices[3:]:
        dataset[int(i)]
    return samples / (time.perf_counter() - t0)


def loader_samples_per_second(dataset, workers, samples, batch=16):
    """Samples/s through a DataLoader of ``workers`` processes, from its second batch on (at least
    ``samples``, whole batches)."""
    from torch.utils.data import DataLoader, RandomSampler
    sampler = RandomSampler(dataset, replacement=True, num_samples=(-(-samples // batch) + 1) * batch)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)
    batches = iter(loader)
    next(batches)  # the workers have started
    t0, count = time.perf_counter(), 0
    for item in batches:
        count += item['gt'].shape[0]
    return count / (time.perf_counter() - t0)


def bench_data(args, log):
    """One row per data set of :data:`DATA_SETS` on the same pairs: build time, samples/s."""
    from basicsr.data import build_dataset

    from basicsr_ext.training import data  # noqa: F401  (registers InMemoryPairedImageDataset)
    workdir = tempfile.mkdtemp(prefix='asid_data_bench_')
    try:
        if args.data_gt:
            gt_dir, lq_dir = args.data_gt, args.data_lq
        else:
            make_train_data(os.path.join(workdir, 'pairs'), count=args.data_count, hr_size=480, scale=args.data_scale)
            gt_dir, lq_dir = os.path.join(workdir, 'pairs', 'HR'), os.path.join(workdir, 'pairs', 'LR')
        log(f'data: LMDBs of {gt_dir} and {lq_dir} in {workdir}')
        lmdb_gt, lmdb_lq = make_data_lmdbs(gt_dir, lq_dir, workdir)
        rows = []
        for label, kind, backend in DATA_SETS:
            roots = (lmdb_gt, lmdb_lq) if backend == 'lmdb' else (gt_dir, lq_dir)
            opt = {'name': label, 'type': kind, 'dataroot_gt': roots[0], 'dataroot_lq': roots[1],
                   'io_backend': {'type': backend}, 'gt_size': args.data_patch, 'use_hflip': True, 'use_rot': True,
                   'scale': args.data_scale, 'phase': 'train'}
            t0 = time.perf_counter()
            dataset = build_dataset(opt)
            built = time.perf_counter() - t0
            row = {'dataset': kind, 'backend': backend, 'pairs': len(dataset), 'build_s': built,
                   'samples_per_s': samples_per_second(dataset, args.data_samples),
                   'memory_gb': dataset.nbytes / 1e9 if hasattr(dataset, 'nbytes') else None, 'loaders': []}
            log(f'data {kind} ({backend}): built in {built:.2f} s, {row["samples_per_s"]:.1f} samples/s in one process')
            for workers in args.data_workers:
                rate = loader_samples_per_second(dataset, workers, args.data_samples)
                row['loaders'].append({'workers': workers, 'samples_per_s': rate,
                                       'per_worker': rate / workers if workers else None})
                log(f'data {kind} ({backend}): {rate:.1f} samples/s through a DataLoader of {workers} workers')
            rows.append(row)
            del dataset
        return {'gt': args.data_gt or f'{args.data_count} generated 480 px images', 'lq': lq_dir,
                'scale': args.data_scale, 'gt_size': args.data_patch,
                'samples': args.data_samples, 'rows': rows}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bench_stop_check(device, repeat, log):
    """Microseconds the ranks of a DDP run spend each iteration agreeing whether to stop on a signal
    (:meth:`basicsr_ext.patches.runs.StopOnSignal.agreed`); run under torchrun. Returns 0."""
    import torch.distributed as dist

    from basicsr_ext.patches.runs import StopOnSignal
    if 'RANK' not in os.environ:
        raise SystemExit('--stop-check measures ranks: torchrun --nproc_per_node=2 -m basicsr_ext benchmark '
                         '--stop-check')
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    if device.type == 'cuda':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    dist.init_process_group(backend)
    opt = {'dist': True}
    stop = StopOnSignal()
    stop.join_ranks(opt)
    times = []
    for i in range(repeat + 100):  # the first 100: warm-up
        start = time.perf_counter()
        stop.agreed(opt)
        if i >= 100:
            times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        times.sort()
        log(f'stop check, {dist.get_world_size()} ranks ({backend} training, agreement over gloo), {repeat} '
            f'iterations: median {statistics.median(times) * 1e6:.0f} us, 99th percentile '
            f'{times[int(len(times) * 0.99)] * 1e6:.0f} us per iteration')
    dist.destroy_process_group()
    return 0

"""Which precision should ``basicsr infer`` use on a GPU? PSNR and speed per precision.

::

    python -m basicsr_ext.commands.precision_check --hr-dir ../shared/datasets/Set5 --model-path net_g.pth
    python -m basicsr_ext.commands.precision_check --hr-dir ../shared/datasets/Set5 --train-dir ../shared/datasets/Set14 \
        --train-steps 2000          # no trained weights at hand: a briefly trained random ASID

For every precision (fp32, bf16, fp16) and way of running it (``cast``: weights and inputs
cast, what :class:`asid_arch.inference.ASIDUpsampler` does by default; ``amp``: autocast with
fp32 weights; ``compile``: cast and compiled, ``basicsr infer``'s fast path), it upscales the MATLAB-bicubic LR of each HR image (as ``basicsr prepare
benchmark`` makes them) and prints the Y-channel PSNR against HR (border ``scale`` cropped,
8-bit output, as BasicSR's validation), its difference to fp32's, the PSNR of the output
against fp32's output (how far the numbers moved), and the time of one
``--bench-size`` LR image. The recommendation is the fastest run whose mean PSNR is within
``--tolerance`` (0.01 dB) of fp32's: the value for ``GPU_AUTO_PRECISION`` in
:mod:`asid_arch.inference`.

Random weights make PSNR against HR meaningless, so without ``--model-path`` the network is
first trained for ``--train-steps`` on random crops of ``--train-dir`` (L1, AdamW 5e-4, as the
release recipe), which takes a minute or two on a GPU.
"""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

import basicsr_ext  # noqa: F401  (compatibility patches before BasicSR is imported)
from asid_arch import ASID
from asid_arch.checkpoint import build_asid
from asid_arch.inference import ASIDUpsampler
from asid_arch.runtime import PRECISIONS, resolve_device
from basicsr_ext.commands.benchmark_runs import time_forward
from basicsr_ext.common.images import bicubic_downscale, is_image_name, load_image, modcrop

def load_pairs(folder, scale):
    """[(name, HR uint8 RGB cropped to a multiple of scale, LR uint8 RGB)] for the images in ``folder``."""
    pairs = []
    for name in sorted(os.listdir(folder)):
        if not is_image_name(name):
            continue
        hr = modcrop(load_image(os.path.join(folder, name)), scale)[..., ::-1]
        hr = np.ascontiguousarray(hr)
        pairs.append((name, hr, bicubic_downscale(hr, scale)))
    if not pairs:
        raise SystemExit(f'no images in {folder}')
    return pairs


def psnr_y(sr, hr, border):
    """BasicSR's Y-channel PSNR of two uint8 RGB images, ``border`` px cropped."""
    from basicsr.metrics import calculate_psnr
    return calculate_psnr(sr[..., ::-1], hr[..., ::-1], crop_border=border, input_order='HWC', test_y_channel=True)


def train_briefly(net, pairs, steps, device, scale, patch=48, batch=16, seed=0, max_seconds=None):
    """A few L1 / AdamW steps on random aligned crops: weights with realistic activations."""
    rng = np.random.default_rng(seed)
    net.train().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    lrs = [torch.from_numpy(lr.transpose(2, 0, 1).copy()).float().div(255) for _, _, lr in pairs]
    hrs = [torch.from_numpy(hr.transpose(2, 0, 1).copy()).float().div(255) for _, hr, _ in pairs]
    patch = min(patch, max(min(lr.shape[1:]) for lr in lrs))  # small training images: smaller patches
    usable = [i for i, lr in enumerate(lrs) if min(lr.shape[1:]) >= patch]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        xs, ys = [], []
        for i in rng.choice(usable, batch):
            _, h, w = lrs[i].shape
            top, left = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
            x = lrs[i][:, top:top + patch, left:left + patch]
            y = hrs[i][:, top * scale:(top + patch) * scale, left * scale:(left + patch) * scale]
            k = int(rng.integers(0, 4))
            xs.append(torch.rot90(x, k, (1, 2)))
            ys.append(torch.rot90(y, k, (1, 2)))
        x, y = torch.stack(xs).to(device), torch.stack(ys).to(device)
        loss = (net(x) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        elapsed = time.perf_counter() - start
        out_of_time = max_seconds is not None and elapsed > max_seconds
        if step % max(1, steps // 10) == 0 or step == steps or out_of_time:
            print(f'train step {step}/{steps}: L1 {loss.item():.4f} ({elapsed:.0f} s)', flush=True)
        if out_of_time:
            print(f'train: stopped after {max_seconds} s (--train-seconds)')
            break
    return net.eval()


def time_one(up, size, repeats):
    """Median seconds of one whole-image upscale of a ``size`` x ``size`` LR image."""
    x = torch.rand(1, 3, size, size, device=up.device)
    return time_forward(up.upscale_tensor, x, up.device, repeats, warmup=2)[0]


def compare(net, pairs, scale, device, precisions, modes, bench_size, repeats, tolerance, tile=0):
    rows, reference = [], None
    runs = [('fp32', 'amp')] + [(p, m) for p in precisions if p != 'fp32' for m in modes]
    for precision, mode in runs:
        up = ASIDUpsampler(net, device=device, precision=precision, tile=tile, amp=mode == 'amp',
                           compile=mode == 'compile')
        outs = [up.upscale_tensor(torch.from_numpy(lr.transpose(2, 0, 1).copy()).float().div(255))
                for _, _, lr in pairs]
        psnrs = [psnr_y((o.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8), hr, scale)
                 for o, (_, hr, _) in zip(outs, pairs)]
        if reference is None:
            reference = (outs, psnrs)
        moved = [10 * np.log10(1 / max(float(((o - r)**2).mean()), 1e-20)) for o, r in zip(outs, reference[0])]
        finite = all(bool(torch.isfinite(o).all()) for o in outs)
        seconds = time_one(up, bench_size, repeats) if bench_size else float('nan')
        rows.append({
            'precision': precision, 'mode': 'fp32' if precision == 'fp32' else mode,
            'psnr': float(np.mean(psnrs)), 'delta': float(np.mean(psnrs) - np.mean(reference[1])),
            'max_abs_delta_per_image': float(max(abs(a - b) for a, b in zip(psnrs, reference[1]))),
            'psnr_vs_fp32_output': float(np.mean(moved)), 'seconds': seconds, 'finite': finite,
            'per_image': {name: float(p) for (name, _, _), p in zip(pairs, psnrs)},
        })
        del up
    ok = [r for r in rows if r['finite'] and abs(r['delta']) <= tolerance]
    best = min(ok, key=lambda r: r['seconds']) if ok and bench_size else rows[0]
    return rows, best


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m basicsr_ext.commands.precision_check', description=__doc__.split('\n')[0])
    p.add_argument('--hr-dir', required=True, help='HR benchmark images (e.g. Set5)')
    p.add_argument('--model-path', default=None, help='ASID checkpoint (default: a random ASID, see --train-steps)')
    p.add_argument('--scale', type=int, default=4)
    p.add_argument('--num-groups', type=int, default=3)
    p.add_argument('--train-dir', default=None, help='HR images for --train-steps (default: --hr-dir)')
    p.add_argument('--train-steps', type=int, default=0, help='train a random ASID this many steps first')
    p.add_argument('--train-seconds', type=float, default=None, help='stop training after this long')
    p.add_argument('--device', default='auto')
    p.add_argument('--precisions', nargs='+', default=['fp32', 'bf16', 'fp16'], choices=list(PRECISIONS))
    p.add_argument('--modes', nargs='+', default=['amp', 'cast'], choices=['amp', 'cast', 'compile'],
                   help="compile: cast and torch.compile'd, as basicsr infer's fast path (default: amp cast)")
    p.add_argument('--tile', type=int, default=0,
                   help='LR tiles (overlap 24) instead of whole images (0, default); 64: the authors\' protocol, '
                   'and one compilation for all tiles of one size')
    p.add_argument('--bench-size', type=int, default=256, help='LR side of the timed image (0: no timing)')
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--tolerance', type=float, default=0.01, help='allowed PSNR loss in dB (default 0.01)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None, help='also write the results here')
    p.add_argument('--save-weights', default=None, help="save the (trained) network as a BasicSR checkpoint")
    args = p.parse_args(argv)

    warnings.filterwarnings('ignore', message='.* on the CPU is emulated')
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    pairs = load_pairs(args.hr_dir, args.scale)
    if args.model_path:
        net = build_asid(args.model_path, upscale=args.scale)
        source = args.model_path
    else:
        net = ASID(upscale=args.scale, num_groups=args.num_groups)
        source = f'random ASID x{args.scale} ({args.num_groups} groups, seed {args.seed})'
        if args.train_steps:
            train_pairs = load_pairs(args.train_dir, args.scale) if args.train_dir else pairs
            net = train_briefly(net, train_pairs, args.train_steps, device, args.scale, seed=args.seed,
                                max_seconds=args.train_seconds)
            source += f', trained {args.train_steps} steps on {args.train_dir or args.hr_dir}'
    if args.save_weights:
        torch.save({'params': net.state_dict()}, args.save_weights)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'weights: {source}\ndevice: {device} ({name}), torch {torch.__version__}\n'
          f'data: {len(pairs)} images from {args.hr_dir}, x{args.scale}, Y-channel PSNR, border {args.scale}')

    rows, best = compare(net, pairs, args.scale, device, args.precisions, args.modes, args.bench_size, args.repeats,
                         args.tolerance, args.tile)
    print(f'\n{"precision":<9} {"mode":<5} {"PSNR dB":>8} {"vs fp32":>8} {"max|d| img":>10} {"PSNR to fp32 out":>16} '
          f'{f"ms @{args.bench_size}px":>11}')
    for r in rows:
        flag = '' if r['finite'] else '  non-finite output!'
        print(f'{r["precision"]:<9} {r["mode"]:<5} {r["psnr"]:8.4f} {r["delta"]:+8.4f} '
              f'{r["max_abs_delta_per_image"]:10.4f} {r["psnr_vs_fp32_output"]:16.2f} '
              f'{r["seconds"] * 1000:11.2f}{flag}')
    print(f'\nfastest within {args.tolerance} dB of fp32: {best["precision"]} ({best["mode"]})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'weights': source, 'device': name, 'torch': torch.__version__, 'rows': rows,
                       'best': {'precision': best['precision'], 'mode': best['mode']}}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())

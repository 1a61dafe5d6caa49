"""Shared fixtures: tiny paired data sets and option files that train in seconds on a CPU."""
import logging
import os
import socket
import subprocess
import sys

if 'PYTEST_XDIST_WORKER' in os.environ:
    # one thread per test process when the suite runs on several processes (pytest -n): the
    # workers, and the commands they start, share the cores instead of oversubscribing them
    os.environ.setdefault('OMP_NUM_THREADS', '1')

import cv2
import numpy as np
import pytest
import torch
import yaml

if not torch.cuda.is_available():
    # without a GPU the Triton kernels (asid_arch/triton_kernels.py) run through Triton's interpreter
    # (tests/test_kernels.py); it is chosen when Triton is imported, which nothing has done yet
    os.environ.setdefault('TRITON_INTERPRET', '1')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The reference files of the tests: the golden output, the released key manifests.
DATA = os.path.join(REPO, 'tests', 'data')


def make_image(height, width, seed):
    """A smooth colour image: something a network can learn, unlike pure noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(x / (3 + seed) + y / 7)
    g = 0.5 + 0.4 * np.cos(y / (4 + seed))
    b = 0.5 + 0.4 * np.sin((x + y) / (5 + seed))
    return (np.stack([b, g, r], -1) * 255).round().astype(np.uint8)


def write_pairs(root, count, size=64, scale=4, start=0):
    """Write ``count`` HR images and their (area-downscaled) LR partners under ``root/{HR,LR}``."""
    for sub in ('HR', 'LR'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(start, start + count):
        hr = make_image(size, size, i)
        cv2.imwrite(os.path.join(root, 'HR', f'{i:04d}.png'), hr)
        lr = cv2.resize(hr, (size // scale, size // scale), interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(root, 'LR', f'{i:04d}.png'), lr)
    return root


def tiny_options(data_root, name='tiny', network=None, total_iter=10, checkpoint_freq=5, val_freq=5):
    """Options of a complete BasicSR SRModel run on ``data_root/{train,val}``, small enough for CI."""
    network = network or {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                          'upscale': 4}
    paired = {'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'}}
    return {
        'name': name,
        'model_type': 'SRModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {**paired, 'name': 'tiny_train', 'dataroot_gt': f'{data_root}/train/HR',
                      'dataroot_lq': f'{data_root}/train/LR', 'gt_size': 32, 'use_hflip': True, 'use_rot': True,
                      'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1},
            'val': {**paired, 'name': 'tiny_val', 'dataroot_gt': f'{data_root}/val/HR',
                    'dataroot_lq': f'{data_root}/val/LR'},
        },
        'network_g': network,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [total_iter // 2], 'gamma': 0.5},
            'total_iter': total_iter,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {'val_freq': val_freq, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': checkpoint_freq, 'use_tb_logger': False},
    }


def compile_with_backend(monkeypatch, backend):
    """Make ``torch.compile``, as the code under test calls it, compile through ``backend`` with
    ``fullgraph=True`` ('eager': Dynamo's trace alone; 'aot_eager': also AOTAutograd's joint
    forward/backward graph), without generating code. Returns the keyword arguments of each call."""
    import torch
    calls, real_compile = [], torch.compile

    def compile(fn, **kwargs):
        calls.append(kwargs)
        return real_compile(fn, backend=backend, fullgraph=True, **kwargs)

    monkeypatch.setattr(torch, 'compile', compile)
    torch._dynamo.reset()
    return calls


def write_options(path, opt):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def cpu_ranks_env(**extra):
    """The environment of a test's training processes under a launcher, on the CPU (gloo) also on
    a GPU host: these tests are about DDP as such, and one GPU cannot hold two NCCL ranks."""
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': '', **extra}


def free_port():
    """A TCP port nobody listens on now (a fixed one can still be held by an earlier run)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def kill_after_iteration(command, cwd, iteration, timeout=240):
    """Start ``command`` (a ``basicsr train``) and SIGKILL it once its log shows an iteration after
    ``iteration``; returns that log line. No sleeping, no polling: the log says when. A run that
    finishes first, or hangs past ``timeout`` seconds, fails the calling test."""
    import re
    import signal
    import threading
    run = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(timeout, run.kill)
    watchdog.start()
    killed_after = None
    try:
        for line in run.stderr:
            match = re.search(r'\[epoch:\s*\d+, iter:\s*([\d,]+),', line)
            if match and int(match.group(1).replace(',', '')) > iteration:
                run.send_signal(signal.SIGKILL)
                killed_after = line
                break
        run.wait()
    finally:
        watchdog.cancel()
        run.stderr.close()
    assert killed_after and run.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    return killed_after


def run_basicsr(*args, cwd, env=None, timeout=300):
    """Run the ``basicsr`` command as a user would, in a fresh interpreter."""
    return subprocess.run([sys.executable, '-m', 'basicsr_ext', *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='session', autouse=True)
def datacheck_cache(tmp_path_factory):
    """The data check's cache (``$XDG_CACHE_HOME/asid-basicsr/datacheck``) in a folder of the test
    session, for the commands run here and in subprocesses: the user's own stays untouched."""
    folder = tmp_path_factory.mktemp('xdg_cache')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('XDG_CACHE_HOME', str(folder))
        yield folder


@pytest.fixture(scope='session', autouse=True)
def compile_cache(tmp_path_factory):
    """torch.compile's cache in a folder of the test session: the commands run here (``basicsr
    train`` sets ``experiments/compile_cache`` of the folder it runs in, unless the variable is set)
    write neither into the clone nor into the user's cache, and every session compiles afresh, as CI."""
    folder = tmp_path_factory.mktemp('compile_cache')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TORCHINDUCTOR_CACHE_DIR', str(folder))
        yield folder


@pytest.fixture(scope='session')
def demo_datasets(tmp_path_factory):
    """``basicsr prepare demo`` run once for the session (a few seconds): the folder it ran in,
    holding ``datasets/demo``, and what it printed. Tests read it; they write elsewhere."""
    import contextlib
    import io

    from basicsr_ext.commands.cli import main
    folder = tmp_path_factory.mktemp('demo')
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as printed:
        mp.chdir(folder)
        assert main(['prepare', 'demo']) == 0
    return folder, printed.getvalue()


@pytest.fixture
def tiny_data(tmp_path):
    """``tmp_path/data/{train,val}/{HR,LR}``: four training pairs and one validation pair at x4."""
    root = tmp_path / 'data'
    write_pairs(str(root / 'train'), 4)
    write_pairs(str(root / 'val'), 1, start=10)
    return str(root)


@pytest.fixture
def basicsr_log():
    """Messages of BasicSR's logger (which does not propagate to pytest's)."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger('basicsr')
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def load_golden():
    """The golden file: x4 ASID weights (seeded), a 21x30 input in [0, 1] and the output of the reference."""
    import torch
    return torch.load(os.path.join(DATA, 'golden-asid-x4.pt'), map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def golden():
    """:func:`load_golden`, once per test module."""
    return load_golden()

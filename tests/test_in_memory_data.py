"""InMemoryPairedImageDataset (BasicSR's samples, decoded once) and ``num_worker_per_gpu: auto``."""
import glob
import logging
import os
import random
import re
import subprocess
import sys
from functools import partial
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset, worker_init_fn

from basicsr_ext.commands.cli import main
from basicsr_ext.common import resources
from basicsr_ext.patches import compat
from basicsr_ext.common.datacheck import DataError
from basicsr_ext.common.options import OptionError, load_and_check
from basicsr_ext.commands.prepare import make_lmdb
from basicsr_ext.training.data import InMemoryPairedImageDataset
from conftest import kill_after_iteration, tiny_options, write_options, write_pairs


def dataset_options(root, kind='InMemoryPairedImageDataset', phase='train', **extra):
    return {'name': 'pairs', 'type': kind, 'dataroot_gt': f'{root}/HR', 'dataroot_lq': f'{root}/LR',
            'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': True, 'use_rot': True, 'scale': 4,
            'phase': phase, **extra}


@pytest.fixture
def pairs(tmp_path):
    """Five x4 pairs of different sizes (80x64 .. 96x80 HR, some wider, some taller)."""
    root = tmp_path / 'pairs'
    for i in range(5):
        write_pairs(str(root), 1, size=64 + 8 * (i % 3), start=i)
    # one of them transposed: not every image has the same shape
    import cv2
    for sub, size in (('HR', (64, 80)), ('LR', (16, 20))):
        img = cv2.imread(str(root / sub / '0004.png'))
        cv2.imwrite(str(root / sub / '0004.png'), cv2.resize(img, size, interpolation=cv2.INTER_AREA))
    return str(root)


def index_of(dataset, name):
    """The index of HR image ``name`` (BasicSR lists a folder in the file system's order)."""
    return next(i for i, p in enumerate(dataset.paths) if os.path.basename(p['gt_path']) == name)


def assert_same_samples(reference, in_memory, indices):
    for n, index in enumerate(indices):
        random.seed(n)
        np.random.seed(n)
        expected = reference[index]
        random.seed(n)
        np.random.seed(n)
        got = in_memory[index]
        assert got.keys() == expected.keys()
        for key in ('gt', 'lq'):
            assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), (key, index)
        assert (got['gt_path'], got['lq_path']) == (expected['gt_path'], expected['lq_path'])


@pytest.mark.parametrize('extra', [{}, {'mean': [0.4, 0.5, 0.6], 'std': [0.2, 0.3, 0.25]}, {'color': 'y'}])
def test_training_samples_equal_paired_image_datasets_for_the_same_seed_and_index(pairs, extra):
    reference = build_dataset(dataset_options(pairs, 'PairedImageDataset', **extra))
    in_memory = build_dataset(dataset_options(pairs, **extra))
    assert len(in_memory) == len(reference) == 5
    # random crops, flips and rotations: 40 draws cover every flip/rotation on each image
    assert_same_samples(reference, in_memory, [i % 5 for i in range(40)])


def test_validation_samples_equal_paired_image_datasets(pairs):
    reference = build_dataset(dataset_options(pairs, 'PairedImageDataset', phase='val'))
    in_memory = build_dataset(dataset_options(pairs, phase='val'))
    assert_same_samples(reference, in_memory, range(5))
    taller = index_of(in_memory, '0004.png')
    assert in_memory[taller]['gt'].shape == (3, 80, 64)  # whole images, each of its own shape


def test_samples_from_an_lmdb_and_a_meta_info_file_equal_paired_image_datasets(pairs, tmp_path):
    names = sorted(os.listdir(f'{pairs}/HR'))
    make_lmdb(f'{pairs}/HR', names, str(tmp_path / 'HR.lmdb'))
    make_lmdb(f'{pairs}/LR', names, str(tmp_path / 'LR.lmdb'))
    lmdb = dict(dataroot_gt=str(tmp_path / 'HR.lmdb'), dataroot_lq=str(tmp_path / 'LR.lmdb'),
                io_backend={'type': 'lmdb'})
    reference = build_dataset({**dataset_options(pairs, 'PairedImageDataset'), **lmdb})
    in_memory = build_dataset({**dataset_options(pairs), **lmdb})
    assert_same_samples(reference, in_memory, [i % 5 for i in range(20)])

    meta = tmp_path / 'meta.txt'
    meta.write_text(''.join(f'{n} (64,64,3)\n' for n in names[1:4]))
    reference = build_dataset(dataset_options(pairs, 'PairedImageDataset', meta_info_file=str(meta)))
    in_memory = build_dataset(dataset_options(pairs, meta_info_file=str(meta)))
    assert len(in_memory) == 3
    assert_same_samples(reference, in_memory, [i % 3 for i in range(12)])


def test_images_are_decoded_once_into_read_only_shared_memory(pairs):
    dataset = build_dataset(dataset_options(pairs))
    assert dataset.gt.buffer.is_shared() and dataset.lq.buffer.is_shared()
    hr = dataset.gt[index_of(dataset, '0004.png')]
    assert hr.shape == (80, 64, 3) and hr.dtype == np.uint8 and not hr.flags.writeable
    sizes = [64 * 64, 72 * 72, 80 * 80, 64 * 64, 80 * 64]
    assert dataset.nbytes == sum(s * 3 * (1 + 1 / 16) for s in sizes) == 79_356


def test_pickling_for_a_spawned_worker_sends_a_handle_to_the_pixels_not_the_pixels(pairs):
    dataset = build_dataset(dataset_options(pairs))
    # what DataLoader hands a spawned worker goes through multiprocessing's pickler
    pickled = ForkingPickler.dumps(dataset)
    assert len(pickled) < 4000 < dataset.nbytes
    copy = ForkingPickler.loads(pickled)
    assert np.array_equal(copy.gt[2], dataset.gt[2])


def test_spawned_and_forked_loader_workers_give_the_same_batches_and_leave_the_images_untouched(pairs):
    dataset = build_dataset(dataset_options(pairs))
    before = dataset.gt.buffer.clone(), dataset.lq.buffer.clone()
    batches = {}
    for context in ('spawn', 'fork'):  # spawn: as BasicSR sets under DDP; fork: Linux's default
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=2, num_workers=1, multiprocessing_context=context, shuffle=False,
            persistent_workers=True, worker_init_fn=partial(worker_init_fn, num_workers=1, rank=0, seed=0))
        batches[context] = [(b['gt'], b['lq']) for _ in range(2) for b in loader]  # flips and rotations on
    assert len(batches['spawn']) == 6
    for (gt_s, lq_s), (gt_f, lq_f) in zip(batches['spawn'], batches['fork']):
        assert torch.equal(gt_s, gt_f) and torch.equal(lq_s, lq_f) and gt_s.abs().sum() > 0
    # augment flips in place: the workers must have flipped copies, never the shared images
    assert torch.equal(before[0], dataset.gt.buffer) and torch.equal(before[1], dataset.lq.buffer)


def test_memory_is_logged_before_decoding_and_progress_while_decoding(pairs, basicsr_log, monkeypatch):
    from basicsr_ext.training import data
    monkeypatch.setattr(data, 'PROGRESS_EVERY', 2)
    dataset = build_dataset(dataset_options(pairs))
    lines = basicsr_log
    first = next(i for i, line in enumerate(lines) if 'InMemoryPairedImageDataset pairs' in line)
    assert re.search(r'5 pairs take 0.0794 MB decoded per process \(HR 0.0747 MB \+ LR 0.00467 MB\); '
                     r'MemAvailable [\d.]+ [GM]B', lines[first])
    progress = [line.split(' (')[0] for line in lines[first + 1:] if 'decoded' in line and '/5 pairs' in line]
    assert progress == ['pairs: decoded 2/5 pairs', 'pairs: decoded 4/5 pairs', 'pairs: decoded 5/5 pairs']
    assert len(dataset) == 5


def test_refuses_in_one_line_naming_the_figures_and_the_alternatives_when_it_would_not_fit(pairs, monkeypatch):
    monkeypatch.setattr(resources, 'available_memory', lambda: 50_000)
    with pytest.raises(resources.NoRoomError) as e:
        InMemoryPairedImageDataset(dataset_options(pairs))
    message = str(e.value)
    assert '\n' not in message and 'needs 0.0794 MB of memory on this host' in message
    assert '0.05 MB available (MemAvailable)' in message and 'PairedImageDataset' in message and 'LMDB' in message
    # per host: under DDP each rank of this host decodes its own copy
    monkeypatch.setattr(resources, 'available_memory', lambda: 10**9)
    monkeypatch.setattr(resources, 'shared_memory_free', lambda path='/dev/shm': 100_000)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    with pytest.raises(resources.NoRoomError, match=r'needs 0.124 MB of shared memory on this host \(2 '
                                                    r'processes x 0.0622 MB\), but /dev/shm has 0.1 MB free'):
        resources.check_fits(62_208, resources.ranks_on_host(), 'x', 'y')


def test_an_image_that_does_not_decode_is_named_in_one_line(pairs):
    with open(f'{pairs}/LR/0002.png', 'r+b') as f:  # a complete PNG whose pixel data is damaged
        f.seek(60)
        f.write(b'\xff' * 40)
    with pytest.raises(DataError, match=r'LR/0002.png: not a readable image'):
        build_dataset(dataset_options(pairs))


def test_option_checker_checks_the_in_memory_types_files_and_room_before_any_experiment_folder(
        tmp_path, tiny_data, monkeypatch, capsys):
    opt = tiny_options(tiny_data)
    opt['datasets']['train']['type'] = 'InMemoryPairedImageDataset'
    opt_file = write_options(tmp_path / 'mem.yml', opt)
    load_and_check(opt_file)
    monkeypatch.setattr(resources, 'available_memory', lambda: 10_000)
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', opt_file]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'basicsr train: error: {opt_file}: datasets.train: InMemoryPairedImageDataset (4 pairs '
                          f'decoded) needs ') and '\n' not in err
    assert not (tmp_path / 'experiments').exists()


# ----------------------------------------------------------------------------------------------
# num_worker_per_gpu: auto
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('cores, gpus, workers', [
    (1, 1, 0),     # one core: the main process loads
    (2, 1, 1),     # this CI machine
    (16, 1, 15),   # one H200 of a 16-core machine
    (32, 2, 15),   # two of a 32-core machine
    (128, 1, 16),  # capped
    (128, 8, 15),
    (8, 8, 1),     # fewer cores than GPUs can use: still one worker each
    (4, 0, 3),     # a CPU run
])
def test_auto_workers_share_the_cores_among_the_gpus_of_the_host(cores, gpus, workers):
    assert resources.auto_workers(cores, gpus) == workers


def test_build_dataloader_resolves_auto_to_the_hosts_share_and_logs_it(pairs, monkeypatch, basicsr_log):
    import basicsr.train
    assert basicsr.train.build_dataloader is build_dataloader  # the patched function, where BasicSR calls it
    monkeypatch.setattr(resources, 'usable_cores', lambda: 9)
    dataset = build_dataset(dataset_options(pairs))
    loader_opt = dict(dataset_options(pairs), num_worker_per_gpu='auto', batch_size_per_gpu=2,
                      persistent_workers=True)
    assert build_dataloader(dataset, loader_opt, num_gpu=0).num_workers == 8
    assert 'patch_auto_workers' in compat.APPLIED
    assert 'num_worker_per_gpu: auto -> 8 (9 usable cores, one training process, at most 16 each)' in basicsr_log
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')  # torchrun: 4 ranks on this host
    assert build_dataloader(dataset, loader_opt, num_gpu=1, dist=True).num_workers == 1
    assert 'num_worker_per_gpu: auto -> 1 (9 usable cores, 4 ranks on this host, at most 16 each)' in basicsr_log
    monkeypatch.setattr(resources, 'usable_cores', lambda: 1)
    loader = build_dataloader(dataset, loader_opt, num_gpu=0)
    assert loader.num_workers == 0 and not loader.persistent_workers  # which the DataLoader refuses without workers
    assert loader_opt['num_worker_per_gpu'] == 'auto'  # the options are left as they were


def test_spawned_workers_are_kept_through_epochs_unless_the_file_says_otherwise(pairs, monkeypatch, basicsr_log):
    # Under DDP BasicSR spawns its loader workers and (persistent_workers defaulting to false) starts
    # them again at every epoch: each start re-imports torch and BasicSR in every worker.
    import multiprocessing
    dataset = build_dataset(dataset_options(pairs))
    loader_opt = dict(dataset_options(pairs), num_worker_per_gpu=1, batch_size_per_gpu=2)
    assert not build_dataloader(dataset, loader_opt, num_gpu=0).persistent_workers  # forked: BasicSR's default
    monkeypatch.setattr(multiprocessing, 'get_start_method', lambda allow_none=False: 'spawn')  # as init_dist sets
    loader = build_dataloader(dataset, loader_opt, num_gpu=0)
    assert loader.persistent_workers and 'persistent_workers' not in loader_opt
    assert ('persistent_workers: not set -> true (spawned loader workers are kept through epochs rather than started '
            'again at each one)') in basicsr_log
    assert not build_dataloader(dataset, dict(loader_opt, persistent_workers=False), num_gpu=0).persistent_workers
    assert not build_dataloader(dataset, dict(loader_opt, num_worker_per_gpu=0), num_gpu=0).persistent_workers


@pytest.mark.parametrize('value, ok', [('auto', True), (0, True), (3, True), ('many', False), (-1, False),
                                       (2.5, False)])
def test_option_checker_takes_a_number_of_workers_or_auto(value, ok, tmp_path, tiny_data):
    opt = tiny_options(tiny_data)
    opt['datasets']['train']['num_worker_per_gpu'] = value
    opt_file = write_options(tmp_path / 'w.yml', opt)
    if ok:
        load_and_check(opt_file)
    else:
        with pytest.raises(OptionError, match=r"datasets.train.num_worker_per_gpu: must be a number of workers "
                                              r"\(0 or more\) or 'auto', got "):
            load_and_check(opt_file)
    # a file's number can be overridden by auto, and the reverse
    forced = load_and_check(opt_file, ['datasets:train:num_worker_per_gpu=auto'])
    assert forced['datasets']['train']['num_worker_per_gpu'] == 'auto'
    assert load_and_check(opt_file, ['datasets:train:num_worker_per_gpu=2'])['datasets']['train'][
        'num_worker_per_gpu'] == 2


def test_killed_in_memory_run_with_auto_workers_resumes_and_finishes(tmp_path, tiny_data):
    # As users run it: `basicsr train` in its own process, ASID, the in-memory type and loader
    # workers sized by auto (1 on this 2-core machine: a worker process that crops from memory).
    network = {'type': 'ASID', 'upscale': 4, 'num_groups': 1, 'num_feat': 8}
    total = 12
    opt = tiny_options(tiny_data, name='mem', network=network, total_iter=total, checkpoint_freq=4, val_freq=1000)
    opt['model_type'] = 'ASIDModel'
    opt['datasets']['train'].update(type='InMemoryPairedImageDataset', num_worker_per_gpu='auto',
                                    persistent_workers=True, dataset_enlarge_ratio=10)
    command = [sys.executable, '-m', 'basicsr_ext', 'train', '-opt', write_options(tmp_path / 'm.yml', opt),
               '--auto_resume']
    states = tmp_path / 'experiments/mem/training_states'
    kill_after_iteration(command, tmp_path, 4)  # the save at 4 has finished
    saved = max(int(name.split('.')[0]) for name in os.listdir(states) if re.fullmatch(r'\d+\.state', name))
    assert 4 <= saved < total

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = open(sorted(glob.glob(str(tmp_path / 'experiments/mem/train_mem_*.log')))[-1]).read()
    assert 'Dataset [InMemoryPairedImageDataset] - tiny_train is built.' in resumed
    assert re.search(r'num_worker_per_gpu: auto -> \d+ \(', resumed)
    assert f'iter: {saved}.' in resumed and 'End of training' in resumed
    assert (states / f'{total}.state').is_file()

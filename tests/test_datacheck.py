"""Data checks before training: one line naming the path and what is wrong, exit status 2."""
import contextlib
import io
import os
import pathlib
import shutil

import cv2
import pytest

from basicsr_ext.commands.cli import main
from conftest import make_image, tiny_options, write_options, write_pairs


@pytest.fixture
def data(tmp_path):
    """``tmp_path/data/{train,val}/{HR,LR}``: 64 px HR, 16 px LR (x4)."""
    root = tmp_path / 'data'
    write_pairs(str(root / 'train'), 3)
    write_pairs(str(root / 'val'), 1, start=10)
    return root


def run_train(tmp_path, opt, capsys, monkeypatch, *extra):
    """``basicsr train`` on ``opt``: returns (exit status, the lines it printed to stderr)."""
    monkeypatch.chdir(tmp_path)
    status = main(['train', '-opt', write_options(tmp_path / 'opt.yml', opt), *extra])
    err = capsys.readouterr().err
    assert not (tmp_path / 'experiments').exists(), 'training started'
    return status, err.splitlines()


def expect_one_line(tmp_path, opt, capsys, monkeypatch, *words):
    status, lines = run_train(tmp_path, opt, capsys, monkeypatch)
    assert status == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f'basicsr train: error: {tmp_path / "opt.yml"}: '), lines[0]
    for word in words:
        assert str(word) in lines[0], lines[0]
    return lines[0]


def test_good_data_passes_the_checks_and_trains(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', write_options(tmp_path / 'opt.yml', tiny_options(str(data), total_iter=1))]) == 0


def test_missing_dataset_folder(tmp_path, data, capsys, monkeypatch):
    shutil.rmtree(data / 'train' / 'LR')
    expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch,
                    'datasets.train.dataroot_lq', data / 'train' / 'LR', 'does not exist')


def test_empty_dataset_folder(tmp_path, data, capsys, monkeypatch):
    for name in os.listdir(data / 'val' / 'HR'):
        os.remove(data / 'val' / 'HR' / name)
    (data / 'val' / 'HR' / '.DS_Store').write_text('hidden files do not count')
    expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch,
                    'datasets.val', 'no images in', data / 'val' / 'HR')


def test_hr_image_without_lr_partner(tmp_path, data, capsys, monkeypatch):
    os.rename(data / 'train' / 'LR' / '0001.png', data / 'train' / 'LR' / '0001_x4.png')
    line = expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch,
                           'datasets.train', 'HR image has no LR partner in', data / 'train' / 'LR', '0001.png')
    assert line.endswith('(first: 0001.png)')


def test_lr_image_without_hr_partner(tmp_path, data, capsys, monkeypatch):
    cv2.imwrite(str(data / 'train' / 'LR' / '0099.png'), make_image(16, 16, 9))
    expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch,
                    'datasets.train', '1 LR image has no HR partner in', data / 'train' / 'HR', '0099.png')


def test_partner_named_by_filename_tmpl(tmp_path, data, capsys, monkeypatch):
    opt = tiny_options(str(data))
    opt['datasets']['train']['filename_tmpl'] = '{}x4'
    expect_one_line(tmp_path, opt, capsys, monkeypatch,
                    "3 HR images have no LR partner named by filename_tmpl '{}x4'", '(first: 0000.png)')


def test_lr_that_is_not_hr_divided_by_the_scale(tmp_path, data, capsys, monkeypatch):
    lr = data / 'train' / 'LR' / '0002.png'
    cv2.imwrite(str(lr), make_image(32, 32, 2))  # an x2 LR in the x4 folder
    line = expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch, 'datasets.train')
    assert line.endswith(f'LR {lr} is 32x32 but HR {data / "train" / "HR" / "0002.png"} is 64x64: '
                         f'expected 16x16 (HR / scale 4)')


def test_validation_lr_of_the_wrong_size(tmp_path, data, capsys, monkeypatch):
    # validation crops HR to LR * scale (benchmark HR need not be a multiple of the scale), but
    # an LR smaller than HR / scale is a wrong pair
    cv2.imwrite(str(data / 'val' / 'LR' / '0010.png'), make_image(15, 16, 0))
    expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch,
                    'datasets.val: LR', 'is 16x15 but HR', 'is 64x64: expected 16x16 (HR / scale 4)')


def test_validation_hr_not_a_multiple_of_the_scale_is_fine(tmp_path, data, capsys, monkeypatch):
    cv2.imwrite(str(data / 'val' / 'HR' / '0010.png'), make_image(66, 67, 0))  # LR 16x16 = floor(HR / 4)
    monkeypatch.chdir(tmp_path)
    opt = tiny_options(str(data), total_iter=1)
    assert main(['train', '-opt', write_options(tmp_path / 'opt.yml', opt)]) == 0


def test_training_lr_times_scale_must_equal_hr_exactly(tmp_path, data, capsys, monkeypatch):
    cv2.imwrite(str(data / 'train' / 'HR' / '0000.png'), make_image(66, 64, 0))
    expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch,
                    'datasets.train: LR', 'is 16x16 but HR', 'is 64x66: expected 16x16 (HR / scale 4)')


def test_hr_smaller_than_the_training_patch(tmp_path, data, capsys, monkeypatch):
    opt = tiny_options(str(data))
    opt['datasets']['train']['gt_size'] = 96
    expect_one_line(tmp_path, opt, capsys, monkeypatch,
                    'datasets.train: HR', data / 'train' / 'HR' / '0000.png', 'is 64x64, smaller than gt_size 96')


@pytest.mark.parametrize('damage,what', [
    ('text', 'not a readable image'),
    ('empty', 'empty file, not an image'),
    ('truncated', 'truncated PNG (the file ends before its IEND chunk)'),
])
def test_unreadable_image(damage, what, tmp_path, data, capsys, monkeypatch):
    path = data / 'train' / 'HR' / '0001.png'
    if damage == 'text':
        path.write_text('not an image\n')
    elif damage == 'empty':
        path.write_bytes(b'')
    else:
        path.write_bytes(path.read_bytes()[:-40])
    line = expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch, 'datasets.train', what)
    assert f'datasets.train: {path}: ' in line


def test_image_listed_in_meta_info_file_but_missing(tmp_path, data, capsys, monkeypatch):
    meta = tmp_path / 'meta.txt'
    meta.write_text('0000.png (64,64,3)\n0001.png (64,64,3)\n0007.png (64,64,3)\n')
    opt = tiny_options(str(data))
    opt['datasets']['train']['meta_info_file'] = str(meta)
    expect_one_line(tmp_path, opt, capsys, monkeypatch,
                    f'datasets.train: 1 image listed in {meta} is not in {data / "train" / "HR"} (first: 0007.png)')


def test_lmdb_of_another_scale(tmp_path, capsys, monkeypatch):
    """An x4 option file pointed at the x2 LMDB that ``basicsr prepare div2k --lmdb`` wrote."""
    monkeypatch.chdir(tmp_path)
    os.makedirs('hr')
    for i in range(2):
        cv2.imwrite(f'hr/{i:04d}.png', make_image(48, 48, i))
    assert main(['prepare', 'div2k', '--input', 'hr', '--crop-size', '48', '--step', '48', '--scales', '2', '4',
                 '--lmdb', '--workers', '1']) == 0
    opt = tiny_options(str(tmp_path / 'unused'))
    root = tmp_path / 'datasets' / 'DIV2K'
    opt['datasets']['train'].update({'dataroot_gt': str(root / 'DIV2K_train_HR_sub.lmdb'),
                                     'dataroot_lq': str(root / 'DIV2K_train_LR_bicubic_X2_sub.lmdb'),
                                     'io_backend': {'type': 'lmdb'}})
    write_pairs(str(tmp_path / 'unused' / 'val'), 1)
    capsys.readouterr()
    expect_one_line(tmp_path, opt, capsys, monkeypatch,
                    f'datasets.train: LR {root / "DIV2K_train_LR_bicubic_X2_sub.lmdb"}:0000_s001 is 24x24 but HR',
                    'expected 12x12 (HR / scale 4)')


def test_single_image_dataset_through_basicsr_test(tmp_path, data, capsys, monkeypatch):
    (data / 'val' / 'LR' / 'notes.png').write_text('not an image\n')
    opt = tiny_options(str(data))
    del opt['datasets']['train'], opt['train']
    opt['datasets'] = {'test_1': {'name': 'lr_only', 'type': 'SingleImageDataset',
                                  'dataroot_lq': str(data / 'val' / 'LR'), 'io_backend': {'type': 'disk'}}}
    monkeypatch.chdir(tmp_path)
    assert main(['test', '-opt', write_options(tmp_path / 'opt.yml', opt)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f'basicsr test: error: {tmp_path / "opt.yml"}: datasets.test_1: '
                     f'{data / "val" / "LR" / "notes.png"}: not a readable image (unknown format or corrupt)']
    assert not (tmp_path / 'results').exists()


def test_cuda_prefetch_without_a_gpu_is_one_line(tmp_path, data, capsys, monkeypatch):
    import torch
    if torch.cuda.is_available():
        pytest.skip('there is a GPU here')
    opt = tiny_options(str(data))
    opt['datasets']['train'].update({'prefetch_mode': 'cuda', 'pin_memory': True})
    expect_one_line(tmp_path, opt, capsys, monkeypatch, "datasets.train.prefetch_mode: 'cuda' needs a CUDA GPU",
                    '--force_yml datasets:train:prefetch_mode=~')


# ----------------------------------------------------------------------------------------
# every image decoded once before the run, remembered by (path, size, mtime)
# ----------------------------------------------------------------------------------------
def damage_in_place(path):
    """Zero 16 bytes in the middle of an image file, keeping its size and mtime (bit rot, a bad copy)."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = bytes(16)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize('phase,folder', [('train', 'HR'), ('val', 'LR')])
def test_png_damaged_in_the_middle_is_named_before_the_experiment_folder(phase, folder, tmp_path, data, capsys,
                                                                        monkeypatch):
    path = data / phase / folder / ('0001.png' if phase == 'train' else '0010.png')
    damage_in_place(path)
    line = expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch, f'datasets.{phase}: {path}: ')
    size = '64x64' if folder == 'HR' else '16x16'
    assert line.endswith(f'{path}: damaged image: its header reads {size} but it cannot be decoded'), line


def test_several_damaged_images_name_the_first_and_count_the_others(tmp_path, data, capsys, monkeypatch):
    for i in range(3):
        damage_in_place(data / 'train' / 'HR' / f'000{i}.png')
    line = expect_one_line(tmp_path, tiny_options(str(data)), capsys, monkeypatch, data / 'train' / 'HR' / '0000.png')
    assert line.endswith('cannot be decoded (and 2 more images that do not decode)'), line


@pytest.fixture
def decodes(monkeypatch):
    """The paths the data check decodes, in order."""
    from basicsr_ext.common import datacheck
    seen, decode = [], datacheck._decoded_size
    monkeypatch.setattr(datacheck, '_decoded_size', lambda path: seen.append(path) or decode(path))
    return seen


def test_a_second_start_decodes_only_the_images_that_changed(tmp_path, data, decodes):
    from basicsr_ext.common.options import load_and_check
    opt_file = write_options(tmp_path / 'opt.yml', tiny_options(str(data)))
    load_and_check(opt_file)
    assert len(decodes) == 8  # 3 training pairs, 1 validation pair
    decodes.clear()
    load_and_check(opt_file)
    assert decodes == []
    changed = data / 'train' / 'LR' / '0002.png'
    cv2.imwrite(str(changed), make_image(16, 16, 5))
    os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
    load_and_check(opt_file)
    assert decodes == [str(changed)]


def test_a_damaged_image_is_decoded_again_at_every_start_until_it_is_replaced(tmp_path, data, decodes):
    from basicsr_ext.common.options import OptionError, load_and_check
    opt_file = write_options(tmp_path / 'opt.yml', tiny_options(str(data)))
    damaged = data / 'val' / 'HR' / '0010.png'
    good = damaged.read_bytes()
    damage_in_place(damaged)
    for _ in range(2):
        with pytest.raises(OptionError, match='damaged image'):
            load_and_check(opt_file)
    assert decodes.count(str(damaged)) == 2 and len(decodes) == 8 + 1  # the good ones once
    damaged.write_bytes(good)
    load_and_check(opt_file)


def test_without_a_writable_cache_folder_the_check_decodes_every_time(tmp_path, data, decodes, monkeypatch):
    from basicsr_ext.common.options import load_and_check
    (tmp_path / 'not-a-folder').write_text('')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'not-a-folder'))
    opt_file = write_options(tmp_path / 'opt.yml', tiny_options(str(data)))
    load_and_check(opt_file)
    load_and_check(opt_file)
    assert len(decodes) == 16


# ----------------------------------------------------------------------------------------
# an image damaged after the check: named, skipped and counted while training runs
# ----------------------------------------------------------------------------------------
def test_image_damaged_after_the_check_is_skipped_with_one_line_and_training_goes_on(tmp_path, data, capsys,
                                                                                     monkeypatch):
    from basicsr_ext.common.options import load_and_check
    monkeypatch.chdir(tmp_path)
    opt_file = write_options(tmp_path / 'opt.yml', tiny_options(str(data), name='rot', total_iter=3, val_freq=100))
    load_and_check(opt_file)  # a first start: checked and remembered
    damaged = data / 'train' / 'HR' / '0001.png'
    damage_in_place(damaged)  # the same size and mtime: the check trusts what it decoded before
    capsys.readouterr()
    assert main(['train', '-opt', opt_file]) == 0
    log = open(next((tmp_path / 'experiments' / 'rot').glob('train_rot_*.log'))).read()
    skipped = [line for line in log.splitlines() if 'skipped damaged image' in line]
    assert skipped and skipped[0].endswith(f'tiny_train: skipped damaged image {damaged} (cannot be decoded); '
                                           f'1 of at most 10 (max_damaged)'), skipped
    assert 'End of training' in log


def _dataset(root, **opt):
    from basicsr.data.paired_image_dataset import PairedImageDataset
    return PairedImageDataset({'name': 'tiny_train', 'phase': 'train', 'scale': 4, 'gt_size': 32, 'use_hflip': False,
                               'use_rot': False, 'dataroot_gt': f'{root}/train/HR', 'dataroot_lq': f'{root}/train/LR',
                               'io_backend': {'type': 'disk'}, **opt})


def test_damaged_images_are_counted_once_each_across_spawned_loader_workers_and_epochs(data):
    import torch
    write_pairs(str(data / 'train'), 1, start=3)  # 0000 .. 0003
    dataset = _dataset(data)
    for index in (0, 2):  # (BasicSR lists the folder in the file system's order)
        damage_in_place(pathlib.Path(dataset.paths[index]['gt_path']))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context='spawn',
                                         persistent_workers=True)  # two workers spawned once
    for epoch in (1, 2):
        batches = list(loader)
        assert [b['gt'].shape[0] for b in batches] == [2, 2]
        # worker 0 loads items 0 and 1 (0 damaged: 1 taken instead), worker 1 items 2 and 3 (2 damaged);
        # seen by both workers, and met again in the second epoch, they count as the 2 images they are
        assert list(dataset.damaged) == [1, 0, 1, 0]


def test_more_damaged_images_than_max_damaged_stop_the_run_in_one_line_from_a_spawned_worker(tmp_path, data):
    import subprocess
    import sys
    from conftest import free_port
    write_pairs(str(data / 'train'), 1, start=3)
    opt = tiny_options(str(data), name='stop', total_iter=4, val_freq=100)
    opt['datasets']['train'].update(max_damaged=1, num_worker_per_gpu=1, use_hflip=False, use_rot=False)
    opt_file = write_options(tmp_path / 'opt.yml', opt)
    from basicsr_ext.common.options import load_and_check
    load_and_check(opt_file)
    for i in (0, 2):
        damage_in_place(data / 'train' / 'HR' / f'000{i}.png')
    # under a launcher BasicSR starts the loader workers with 'spawn'
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1',
                             f'--master_port={free_port()}', '-m', 'basicsr_ext', 'train', '-opt', opt_file,
                             '--launcher', 'pytorch'], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith('basicsr train: error:')]
    assert len(ours) == 1 and ours[0].endswith(': 2 damaged images met, more than max_damaged 1; the run stops '
                                               '(replace them, or raise datasets.train.max_damaged)'), ours
    assert 'tiny_train: ' in ours[0] and '/train/HR/000' in ours[0]
    assert len([line for line in result.stderr.splitlines() if 'skipped damaged image' in line]) == 1
    assert 'Traceback' not in result.stderr.split('basicsr train: error:')[0], result.stderr[-3000:]


# ----------------------------------------------------------------------------------------
# LMDB: opened read-only and checked against meta_info.txt before the experiment folder
# ----------------------------------------------------------------------------------------
@pytest.fixture
def lmdb_opt(tmp_path, data):
    """Options training on LMDBs of data/train (HR and LR) written by BasicSR's make_lmdb_from_imgs."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    names = sorted(os.listdir(data / 'train' / 'HR'))
    for side in ('HR', 'LR'):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress
            make_lmdb_from_imgs(str(data / 'train' / side), str(tmp_path / f'{side}.lmdb'), names,
                                [os.path.splitext(n)[0] for n in names], map_size=1 << 24)
    opt = tiny_options(str(data), total_iter=1)
    opt['datasets']['train'].update(dataroot_gt=str(tmp_path / 'HR.lmdb'), dataroot_lq=str(tmp_path / 'LR.lmdb'),
                                    io_backend={'type': 'lmdb'})
    return opt


def test_good_lmdb_is_decoded_once_and_trains(tmp_path, lmdb_opt, monkeypatch):
    from basicsr_ext.common import datacheck
    from basicsr_ext.common.options import load_and_check
    seen, decode = [], datacheck._decoded_shape
    monkeypatch.setattr(datacheck, '_decoded_shape', lambda value: seen.append(value) or decode(value))
    opt_file = write_options(tmp_path / 'opt.yml', lmdb_opt)
    load_and_check(opt_file)
    assert len(seen) == 6  # 3 HR and 3 LR values
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', opt_file]) == 0
    assert len(seen) == 6  # the second look found them decoded before


def test_truncated_data_mdb_is_one_line_from_the_real_command_not_a_bus_error(tmp_path, lmdb_opt):
    from conftest import run_basicsr
    data_mdb = tmp_path / 'HR.lmdb' / 'data.mdb'
    full = os.path.getsize(data_mdb)  # BasicSR's writer leaves no unused page at the end
    with open(data_mdb, 'r+b') as f:  # an interrupted copy
        f.truncate(full * 3 // 4)
    opt_file = write_options(tmp_path / 'opt.yml', lmdb_opt)
    result = run_basicsr('train', '-opt', opt_file, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f'basicsr train: error: {opt_file}: datasets.train: {data_mdb} is truncated: {full * 3 // 4} bytes, but the LMDB '
        f'uses {full} (an interrupted copy? copy it again, or rebuild it with basicsr prepare)']
    assert not (tmp_path / 'experiments').exists()


def test_data_mdb_cut_before_its_meta_pages_is_one_line(tmp_path, lmdb_opt, capsys, monkeypatch):
    data_mdb = tmp_path / 'LR.lmdb' / 'data.mdb'
    data_mdb.write_bytes(data_mdb.read_bytes()[:100])
    expect_one_line(tmp_path, lmdb_opt, capsys, monkeypatch, f'datasets.train: {data_mdb}: not a readable LMDB (')


def test_key_of_meta_info_missing_from_the_lmdb_is_one_line(tmp_path, lmdb_opt, capsys, monkeypatch):
    import lmdb
    with lmdb.open(str(tmp_path / 'HR.lmdb')) as env, env.begin(write=True) as txn:
        txn.delete(b'0001')
    expect_one_line(tmp_path, lmdb_opt, capsys, monkeypatch,
                    f'datasets.train: 1 key of {tmp_path / "HR.lmdb" / "meta_info.txt"} is not in '
                    f'{tmp_path / "HR.lmdb" / "data.mdb"} (first: 0001); rebuild it with basicsr prepare')


def test_zeroed_pages_in_data_mdb_are_one_line(tmp_path, lmdb_opt, capsys, monkeypatch):
    data_mdb = tmp_path / 'HR.lmdb' / 'data.mdb'
    with open(data_mdb, 'r+b') as f:  # pages 3 and 4 of 11: in the middle of the first image's value
        f.seek(3 * 4096)
        f.write(bytes(2 * 4096))
    line = expect_one_line(tmp_path, lmdb_opt, capsys, monkeypatch, f'datasets.train: {data_mdb}: ')
    assert line.endswith('does not decode as an image'), line


@pytest.mark.parametrize('where,value,message', [
    ('train', -1, 'datasets.train.max_damaged: must be a whole number >= 0, got -1'),
    ('train', 'ten', "datasets.train.max_damaged: must be a whole number >= 0, got 'ten'"),
    ('val', 3, 'datasets.val.max_damaged: only the train set skips damaged images (a validation metric would '
               'average other images)'),
])
def test_max_damaged_of_a_wrong_value_or_place_is_one_line(where, value, message, tmp_path, data, capsys,
                                                           monkeypatch):
    opt = tiny_options(str(data))
    opt['datasets'][where]['max_damaged'] = value
    assert expect_one_line(tmp_path, opt, capsys, monkeypatch).endswith(f'opt.yml: {message}')


def test_a_damaged_validation_image_stops_with_one_line_naming_it(data):
    from basicsr_ext.patches.damaged import DamagedDataError
    dataset = _dataset(data, phase='val', name='tiny_val')
    path = dataset.paths[1]['gt_path']
    damage_in_place(pathlib.Path(path))
    with pytest.raises(DamagedDataError) as err:
        dataset[1]
    assert str(err.value) == f'tiny_val: {path} cannot be decoded; validation images are not skipped'
    assert sum(dataset.damaged) == 0


def test_the_decode_cache_takes_a_data_folder_whose_name_is_not_utf8(tmp_path, monkeypatch):
    from basicsr_ext.common import datacheck
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    folder = os.path.join(str(tmp_path), os.fsdecode(b'hr\xe9'))  # a Latin-1 name, as BasicSR reads it
    os.mkdir(folder)
    path = os.path.join(folder, 'a.png')
    with open(path, 'wb') as f:
        f.write(cv2.imencode('.png', make_image(8, 12, 0))[1].tobytes())
    assert datacheck.decode_all([path], 'x') == {path: (12, 8)}
    assert os.listdir(datacheck.cache_dir())  # and remembered for the next start

"""Data checks before training: one line naming the path and what is wrong, exit status 2."""
import os
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

"""``basicsr prepare``: DIV2K-style sub-images, benchmark pairs and the demo set."""
import json
import os
import re

import cv2
import numpy as np
import pytest

from basicsr_ext.common import images  # first: patches BasicSR for today's torchvision

from basicsr_ext.commands import prepare
from basicsr_ext.commands.cli import main
from basicsr.data.paired_image_dataset import PairedImageDataset  # noqa: E402  (after basicsr_ext)
from basicsr.utils.matlab_functions import imresize  # noqa: E402
from conftest import REPO, make_image

SET5 = os.path.join(os.path.dirname(REPO), 'shared', 'datasets', 'Set5')


def matlab_bicubic_lr(hr, scale):
    """The reference: BasicSR's MATLAB imresize of HR / 255, back to uint8 with rounding."""
    return np.clip(np.round(imresize(hr / 255., 1 / scale) * 255.), 0, 255).astype(np.uint8)


def write_hr_images(folder, sizes):
    """HR images of the given (height, width) sizes, named 0000.png, 0001.png, ...; returns the arrays."""
    os.makedirs(folder, exist_ok=True)
    images = {}
    for i, (h, w) in enumerate(sizes):
        img = make_image(h, w, i)
        img[::7, ::5] = 255 - img[::7, ::5]  # some high frequencies, so a wrong resampler shows
        cv2.imwrite(os.path.join(folder, f'{i:04d}.png'), img)
        images[f'{i:04d}'] = img
    return images


def read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def snapshot(root):
    """Every file under ``root``: relative path -> (bytes, mtime)."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, root)] = (f.read(), os.stat(path).st_mtime_ns)
    return files


def div2k(*extra, input_dir='hr', output='datasets/DIV2K', crop=48, step=24):
    return main(['prepare', 'div2k', '--input', input_dir, '--output', output, '--crop-size', str(crop),
                 '--step', str(step), '--workers', '1', *extra])


# ------------------------------------------------------------------------------------------
# LR images: MATLAB bicubic of the (mod-cropped) HR image
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_div2k_lr_equals_matlab_imresize_of_the_cropped_hr_rounded_to_uint8(scale, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hr = write_hr_images('hr', [(70, 101)])['0000']  # not a multiple of any scale
    # a crop larger than the image: one sub-image, the whole HR cropped to a multiple of 12
    assert div2k('--scales', str(scale), crop=480, step=240) == 0
    cropped = hr[:60, :96]
    assert np.array_equal(read('datasets/DIV2K/DIV2K_train_HR_sub/0000_s001.png'), cropped)
    lr = read(f'datasets/DIV2K/DIV2K_train_LR_bicubic/X{scale}_sub/0000_s001.png')
    assert np.array_equal(lr, matlab_bicubic_lr(cropped, scale))


def test_div2k_lr_sub_images_are_crops_of_the_lr_of_the_whole_image_as_official_div2k(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hr = write_hr_images('hr', [(96, 120)])['0000']
    assert div2k('--scales', '4') == 0
    whole_lr = matlab_bicubic_lr(hr, 4)
    # second sub-image: top 0, left 24 (HR) -> LR top 0, left 6, 12x12
    assert np.array_equal(read('datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub/0000_s002.png'), whole_lr[0:12, 6:18])


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_benchmark_writes_gtmod_and_its_matlab_bicubic_lrbic(scale, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hr = write_hr_images('Tiny', [(50, 63)])['0000']
    assert main(['prepare', 'benchmark', '--input', 'Tiny', '--scales', str(scale), '--workers', '1']) == 0
    gt = read(f'datasets/Tiny/GTmod{scale}/0000.png')
    assert np.array_equal(gt, hr[:50 - 50 % scale, :63 - 63 % scale])
    assert np.array_equal(read(f'datasets/Tiny/LRbicx{scale}/0000.png'), matlab_bicubic_lr(gt, scale))


@pytest.mark.skipif(not os.path.isdir(SET5), reason='../shared/datasets/Set5 is not there (a fresh clone)')
def test_set5_x4_lr_is_matlab_bicubic_and_bicubic_psnr_is_the_published_28_42_db(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(['prepare', 'benchmark', '--input', SET5, '--scales', '4']) == 0
    # printed as `prepare demo` prints it
    assert 'Set5 x4: HR in datasets/Set5/GTmod4, LR in datasets/Set5/LRbicx4; bicubic x4 PSNR (Y channel, ' \
           'crop border 4): 28.4' in capsys.readouterr().out
    names = sorted(os.listdir('datasets/Set5/GTmod4'))
    assert names == ['baby.png', 'bird.png', 'butterfly.png', 'head.png', 'woman.png']
    for name in names:
        hr = cv2.imread(os.path.join(SET5, name), cv2.IMREAD_COLOR)
        gt = hr[:hr.shape[0] // 4 * 4, :hr.shape[1] // 4 * 4]
        assert np.array_equal(read(f'datasets/Set5/GTmod4/{name}'), gt)
        assert np.array_equal(read(f'datasets/Set5/LRbicx4/{name}'), matlab_bicubic_lr(gt, 4))
    # papers list bicubic x4 on Set5 at 28.42 dB (MATLAB, Y channel, border 4)
    assert prepare.bicubic_psnr('datasets/Set5/GTmod4', 'datasets/Set5/LRbicx4', 4) == pytest.approx(28.42, abs=0.03)


# ------------------------------------------------------------------------------------------
# sub-image geometry and meta info
# ------------------------------------------------------------------------------------------
def _basicsr_starts(size, crop, step, thresh):
    """BasicSR's scripts/data_preparation/extract_subimages.py, for one side."""
    space = np.arange(0, size - crop + 1, step)
    if size - (space[-1] + crop) > thresh:
        space = np.append(space, size - crop)
    return list(space)


@pytest.mark.parametrize('size,crop,step,thresh', [(2040, 480, 240, 0), (1356, 480, 240, 0), (1404, 480, 240, 0),
                                                   (132, 48, 24, 0), (132, 48, 24, 20), (96, 48, 24, 0)])
def test_crop_starts_match_basicsr_extract_subimages(size, crop, step, thresh):
    assert prepare.crop_starts(size, crop, step, thresh) == _basicsr_starts(size, crop, step, thresh)


def test_div2k_sub_images_are_cut_row_by_row_at_matching_places_in_hr_and_every_lr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hr = write_hr_images('hr', [(100, 137)])['0000']
    assert div2k() == 0
    hr = hr[:96, :132]  # a multiple of 12 = lcm(2, 3, 4), so every scale's LR has whole pixels
    tops, lefts = [0, 24, 48], [0, 24, 48, 72, 84]  # the last column ends at the border
    folder = 'datasets/DIV2K/DIV2K_train_HR_sub'
    assert sorted(os.listdir(folder)) == [f'0000_s{i:03d}.png' for i in range(1, 16)]
    boxes = [(t, l) for t in tops for l in lefts]
    for i, (top, left) in enumerate(boxes, 1):
        name = f'0000_s{i:03d}.png'
        assert np.array_equal(read(f'{folder}/{name}'), hr[top:top + 48, left:left + 48])
        for scale in (2, 3, 4):
            lr = read(f'datasets/DIV2K/DIV2K_train_LR_bicubic/X{scale}_sub/{name}')
            assert lr.shape == (48 // scale, 48 // scale, 3)
    whole_lr3 = matlab_bicubic_lr(hr, 3)
    assert np.array_equal(read('datasets/DIV2K/DIV2K_train_LR_bicubic/X3_sub/0000_s010.png'),
                          whole_lr3[8:24, 28:44])  # box 10: top 24, left 84


def test_div2k_image_smaller_than_the_crop_gives_one_sub_image_of_the_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(40, 200)])
    assert div2k() == 0
    names = sorted(os.listdir('datasets/DIV2K/DIV2K_train_HR_sub'))
    assert len(names) == 7  # width 192: 0, 24, ..., 144; height 36: one row of the whole height
    assert read('datasets/DIV2K/DIV2K_train_HR_sub/0000_s001.png').shape == (36, 48, 3)


def test_meta_info_lists_every_hr_sub_image_with_its_shape_in_basicsr_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 72), (60, 48)])
    grey = make_image(48, 48, 5)[..., 0]
    cv2.imwrite('hr/0002.png', grey)  # read as 3 channels, as BasicSR's datasets read it
    assert div2k() == 0
    lines = open('datasets/DIV2K/meta_info_DIV2K_train_HR_sub.txt').read().splitlines()
    assert lines == ['0000_s001.png (48,48,3)', '0000_s002.png (48,48,3)',
                     '0001_s001.png (48,48,3)', '0001_s002.png (48,48,3)',
                     '0002_s001.png (48,48,3)']
    assert sorted(os.listdir('datasets/DIV2K/DIV2K_train_HR_sub')) == [line.split()[0] for line in lines]
    # BasicSR pairs it with the LR sub-images
    dataset = PairedImageDataset({
        'dataroot_gt': 'datasets/DIV2K/DIV2K_train_HR_sub',
        'dataroot_lq': 'datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub',
        'meta_info_file': 'datasets/DIV2K/meta_info_DIV2K_train_HR_sub.txt', 'filename_tmpl': '{}',
        'io_backend': {'type': 'disk'}, 'phase': 'train', 'scale': 4, 'gt_size': 48, 'use_hflip': False,
        'use_rot': False})
    assert len(dataset) == 5
    item = dataset[4]
    assert tuple(item['gt'].shape) == (3, 48, 48) and tuple(item['lq'].shape) == (3, 12, 12)


# ------------------------------------------------------------------------------------------
# idempotent, resumable, failures reported
# ------------------------------------------------------------------------------------------
def test_second_run_processes_nothing_and_leaves_every_file_as_it_was(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(60, 72), (48, 96), (72, 60)])
    assert div2k('--lmdb') == 0
    assert main(['prepare', 'benchmark', '--input', 'hr', '--name', 'Tiny', '--workers', '1']) == 0
    before = snapshot('datasets')
    capsys.readouterr()
    assert div2k('--lmdb') == 0
    assert main(['prepare', 'benchmark', '--input', 'hr', '--name', 'Tiny', '--workers', '1']) == 0
    out = capsys.readouterr().out
    assert '3 HR images in hr: 0 to process, 3 up to date' in out
    assert 'Tiny: 3 images in hr: 0 to process, 3 up to date' in out
    assert len(re.findall(r'\.lmdb is up to date', out)) == 4
    assert snapshot('datasets') == before


def bench(*scales):
    return main(['prepare', 'benchmark', '--input', 'hr', '--name', 'Tiny', '--workers', '1', '--scales',
                 *map(str, scales)])


def test_outputs_of_a_removed_image_go_at_every_scale_also_those_not_asked_for(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48), (48, 60)])
    assert bench(2, 4) == 0
    os.remove('hr/0001.png')
    capsys.readouterr()
    assert bench(4) == 0  # x2 not asked for: the x2 outputs of 0000 stay, those of 0001 go too
    assert 'Tiny: 1 images in hr: 0 to process, 1 up to date, outdated outputs of 1 images deleted' in \
        capsys.readouterr().out
    for folder in ('GTmod2', 'LRbicx2', 'GTmod4', 'LRbicx4'):
        assert os.listdir(f'datasets/Tiny/{folder}') == ['0000.png'], folder
    units = {json.loads(line)['unit'] for line in open('datasets/Tiny/.prepare/Tiny.jsonl')}
    assert units == {'0000|X2', '0000|X4'}


def test_outputs_of_a_changed_image_at_a_scale_not_asked_for_go_too(tmp_path, monkeypatch):
    # the same rule for changed images: an x2 pair of the old version would not match the new HR
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48), (48, 60)])
    assert bench(2, 4) == 0
    cv2.imwrite('hr/0001.png', make_image(40, 40, 7))
    assert bench(4) == 0
    assert os.listdir('datasets/Tiny/GTmod2') == os.listdir('datasets/Tiny/LRbicx2') == ['0000.png']
    assert read('datasets/Tiny/GTmod4/0001.png').shape == (40, 40, 3)
    assert bench(2) == 0  # asked for again: made from the new version
    assert read('datasets/Tiny/GTmod2/0001.png').shape == (40, 40, 3)


def test_run_from_another_directory_finds_the_earlier_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(60, 72)])
    assert div2k() == 0
    os.makedirs('elsewhere')
    monkeypatch.chdir(tmp_path / 'elsewhere')
    capsys.readouterr()
    assert div2k(input_dir=str(tmp_path / 'hr'), output=str(tmp_path / 'datasets/DIV2K')) == 0
    assert '0 to process, 1 up to date' in capsys.readouterr().out


def test_interrupted_run_resumes_with_the_images_not_done_and_ends_as_a_clean_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(60, 72), (48, 96), (72, 60), (48, 48)])
    real_unit, calls = prepare._div2k_unit, []

    def interrupted_on_the_third_image(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (the unit's files are half written, or not at all)
        return real_unit(job)

    monkeypatch.setattr(prepare, '_div2k_unit', interrupted_on_the_third_image)
    with pytest.raises(KeyboardInterrupt):
        div2k()
    monkeypatch.setattr(prepare, '_div2k_unit', real_unit)
    with open('datasets/DIV2K/.prepare/DIV2K_train.jsonl', 'a') as f:
        f.write('{"unit": "0002|HR", "sig')  # and a record cut short by a kill
    capsys.readouterr()
    assert div2k() == 0
    assert '4 HR images in hr: 2 to process, 2 up to date' in capsys.readouterr().out
    resumed = snapshot('datasets/DIV2K')

    assert div2k(output='clean') == 0
    clean = snapshot('clean')
    ledger = os.path.join('.prepare', 'DIV2K_train.jsonl')
    assert {k: v[0] for k, v in resumed.items() if k != ledger} == {k: v[0] for k, v in clean.items() if k != ledger}
    # the ledger of the resumed run has one record per unit: 4 images x (HR, X2, X3, X4)
    records = [json.loads(line) for line in resumed[ledger][0].decode().splitlines()]
    assert len(records) == 16 and len({r['unit'] for r in records}) == 16


def test_corrupt_images_are_named_one_line_each_the_others_prepared_and_exit_status_1(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48), (48, 96), (60, 48)])
    ok, jpeg = cv2.imencode('.jpg', (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8))
    jpeg = jpeg.tobytes()
    (tmp_path / 'hr' / '0001.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 20)  # replaces a good one
    (tmp_path / 'hr' / 'cut.jpg').write_bytes(jpeg[:len(jpeg) * 2 // 3])  # a download cut short
    (tmp_path / 'hr' / 'headless.jpg').write_bytes(jpeg[:300])  # cut inside its header
    (tmp_path / 'hr' / 'empty.png').write_bytes(b'')
    (tmp_path / 'hr' / 'notes.png').write_text('not an image\n')
    capfd.readouterr()
    assert div2k() == 1  # some images failed (README: exit status 1); 2 is for bad usage
    out, err = capfd.readouterr()
    lines = [re.sub(r'truncated \(\d+ bytes not processed\)', 'truncated (...)', line)
             for line in re.split(r'[\r\n]+', err) if line.strip()]  # and no OpenCV or libpng chatter
    assert lines == [
        'hr/0001.png: corrupt or truncated PNG image (Truncated File Read)',
        'hr/cut.jpg: corrupt or truncated JPEG image (image file is truncated (...))',
        'hr/empty.png: empty file',
        'hr/headless.jpg: corrupt or truncated JPEG image (Truncated File Read)',
        'hr/notes.png: not an image (no decoder recognises it)',
        'basicsr prepare: error: hr: 5 of 7 images could not be prepared (named above); the other 2 were',
    ], err
    assert sorted(os.listdir('datasets/DIV2K/DIV2K_train_HR_sub')) == ['0000_s001.png', '0002_s001.png',
                                                                       '0002_s002.png']
    meta = open('datasets/DIV2K/meta_info_DIV2K_train_HR_sub.txt').read()
    assert meta == '0000_s001.png (48,48,3)\n0002_s001.png (48,48,3)\n0002_s002.png (48,48,3)\n'
    for scale in (2, 3, 4):
        assert len(os.listdir(f'datasets/DIV2K/DIV2K_train_LR_bicubic/X{scale}_sub')) == 3


def test_the_folder_prepare_writes_sub_images_to_is_refused_as_its_input(tmp_path, monkeypatch, capsys):
    # BasicSR's own extract_subimages.py names that folder DIV2K_train_HR_sub too
    monkeypatch.chdir(tmp_path)
    write_hr_images('datasets/DIV2K/DIV2K_train_HR_sub', [(48, 48)])
    assert div2k(input_dir='datasets/DIV2K/DIV2K_train_HR_sub') == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith('is where this preparation writes its sub-images: give the folder of the whole HR images '
                        '(or another --output)') and '\n' not in err, err
    assert os.listdir('datasets/DIV2K/DIV2K_train_HR_sub') == ['0000.png']  # nothing written into it


def test_a_benchmark_image_too_small_for_an_lr_is_named_and_the_others_prepared(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48)])
    cv2.imwrite('hr/tiny.png', make_image(7, 10, 0))  # 8x4 after the x4 crop: a 1-px LR side
    assert main(['prepare', 'benchmark', '--input', 'hr', '--name', 'Tiny', '--scales', '4', '--workers', '1']) == 1
    err = capsys.readouterr().err
    assert 'hr/tiny.png: image is 10x7: a side under twice the scale 4 leaves no LR image' in err, err
    assert sorted(os.listdir('datasets/Tiny/LRbicx4')) == ['0000.png']


def test_an_image_whose_name_has_a_space_is_named_and_left_out_of_the_meta_info(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48)])
    cv2.imwrite('hr/my photo.png', make_image(48, 48, 1))
    assert div2k() == 1
    assert "hr/my photo.png: its name has a space, where BasicSR's meta info files end a name" in capsys.readouterr().err
    assert open('datasets/DIV2K/meta_info_DIV2K_train_HR_sub.txt').read() == '0000_s001.png (48,48,3)\n'


def test_a_benchmark_image_that_changed_and_no_longer_reads_leaves_no_pair_behind(tmp_path, monkeypatch, capsys):
    # a benchmark set is read as a folder: a pair left from the image before would still be tested
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48), (48, 48)])
    command = ['prepare', 'benchmark', '--input', 'hr', '--name', 'Tiny', '--scales', '4', '--workers', '1']
    assert main(command) == 0
    with open('hr/0001.png', 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + b'garbage' * 20)
    assert main(command) == 1
    assert os.listdir('datasets/Tiny/GTmod4') == ['0000.png'] and os.listdir('datasets/Tiny/LRbicx4') == ['0000.png']
    os.remove('hr/0000.png')
    capsys.readouterr()
    assert main(command) == 1
    assert 'bicubic x4 PSNR (Y channel, crop border 4): no pairs' in capsys.readouterr().out


def test_missing_input_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert div2k(input_dir='nowhere') == 2
    assert capsys.readouterr().err == 'basicsr prepare: error: nowhere: input folder does not exist\n'


def test_changed_geometry_replaces_the_sub_images_and_removes_the_ones_no_longer_cut(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 96)])
    assert div2k(crop=24, step=24) == 0
    assert len(os.listdir('datasets/DIV2K/DIV2K_train_HR_sub')) == 8
    assert div2k(crop=48, step=48) == 0
    for folder in ('DIV2K_train_HR_sub', 'DIV2K_train_LR_bicubic/X2_sub', 'DIV2K_train_LR_bicubic/X4_sub'):
        assert sorted(os.listdir(f'datasets/DIV2K/{folder}')) == ['0000_s001.png', '0000_s002.png']


# ------------------------------------------------------------------------------------------
# LMDB
# ------------------------------------------------------------------------------------------
def close_lmdb(dataset):
    for env in dataset.file_client.client._client.values():
        env.close()


def test_lmdb_is_read_by_basicsr_paired_image_dataset_with_the_same_pixels_as_the_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 96), (60, 48)])
    assert div2k('--lmdb', '--scales', '2', '4') == 0
    root = 'datasets/DIV2K'
    assert sorted(n for n in os.listdir(root) if n.endswith('.lmdb')) == [
        'DIV2K_train_HR_sub.lmdb', 'DIV2K_train_LR_bicubic_X2_sub.lmdb', 'DIV2K_train_LR_bicubic_X4_sub.lmdb']
    for scale in (2, 4):
        common = {'dataroot_gt': f'{root}/DIV2K_train_HR_sub.lmdb',
                  'dataroot_lq': f'{root}/DIV2K_train_LR_bicubic_X{scale}_sub.lmdb',
                  'scale': scale}
        val = PairedImageDataset({**common, 'io_backend': {'type': 'lmdb'}, 'phase': 'val'})
        assert len(val) == 5  # 3 + 2 sub-images
        for item in (val[i] for i in range(len(val))):
            assert item['gt_path'] == item['lq_path']  # the LMDB key, e.g. 0000_s002
            name = item['gt_path'] + '.png'
            gt = read(f'{root}/DIV2K_train_HR_sub/{name}')[..., ::-1]  # the dataset gives RGB
            lq = read(f'{root}/DIV2K_train_LR_bicubic/X{scale}_sub/{name}')[..., ::-1]
            assert np.array_equal((item['gt'].numpy().transpose(1, 2, 0) * 255).round(), gt)
            assert np.array_equal((item['lq'].numpy().transpose(1, 2, 0) * 255).round(), lq)
        close_lmdb(val)  # py-lmdb opens a path once per process
        train = PairedImageDataset({**common, 'io_backend': {'type': 'lmdb'}, 'phase': 'train', 'gt_size': 32,
                                    'use_hflip': True, 'use_rot': True})  # (BasicSR pops io_backend.type)
        item = train[0]
        assert tuple(item['gt'].shape) == (3, 32, 32) and tuple(item['lq'].shape) == (3, 32 // scale, 32 // scale)
        close_lmdb(train)


def test_lmdb_refuses_names_basicsr_would_cut_at_a_dot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48)])
    os.rename('hr/0000.png', 'hr/img.v2.png')
    assert div2k('--lmdb') == 2
    assert capsys.readouterr().err.startswith("basicsr prepare: error: hr/img.v2.png: BasicSR's LMDB datasets cut")
    assert div2k() == 0  # without --lmdb the name is fine


def test_lmdb_is_rewritten_when_an_image_changes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48), (48, 48)])
    assert div2k('--lmdb', '--scales', '4') == 0
    os.remove('hr/0001.png')
    capsys.readouterr()
    assert div2k('--lmdb', '--scales', '4') == 0
    out = capsys.readouterr().out
    assert 'outdated outputs of 1 images deleted' in out and 'wrote datasets/DIV2K/DIV2K_train_HR_sub.lmdb' in out
    keys = open('datasets/DIV2K/DIV2K_train_HR_sub.lmdb/meta_info.txt').read().split()
    assert keys[0::3] == ['0000_s001.png']
    assert os.listdir('datasets/DIV2K/DIV2K_train_HR_sub') == ['0000_s001.png']


# ------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------
def test_demo_writes_x4_train_and_val_pairs_and_reports_bicubic_psnr(demo_datasets, monkeypatch):
    folder, out = demo_datasets  # where `basicsr prepare demo` ran, and what it printed
    monkeypatch.chdir(folder)
    root = 'datasets/demo'
    train_hr, train_lr = sorted(os.listdir(f'{root}/train/HR')), sorted(os.listdir(f'{root}/train/LR_bicubic/X4'))
    assert train_hr == train_lr and len(train_hr) > 200
    for name in train_hr[::40]:
        hr, lr = read(f'{root}/train/HR/{name}'), read(f'{root}/train/LR_bicubic/X4/{name}')
        assert hr.shape == (128, 128, 3) and lr.shape == (32, 32, 3)
    assert sorted(os.listdir(f'{root}/val/HR')) == sorted(os.listdir(f'{root}/val/LR_bicubic/X4')) == [
        'chelsea.png', 'coffee.png', 'rocket.png']
    hr = read(f'{root}/val/HR/chelsea.png')
    assert hr.shape == (256, 256, 3)
    assert np.array_equal(read(f'{root}/val/LR_bicubic/X4/chelsea.png'), matlab_bicubic_lr(hr, 4))
    psnr = prepare.bicubic_psnr(f'{root}/val/HR', f'{root}/val/LR_bicubic/X4', 4)
    assert 25 < psnr < 35
    assert f'bicubic x4 PSNR on the validation set (Y channel, crop border 4): {psnr:.2f} dB' in out


def test_opencv_builds_without_a_log_api_still_prepare_quietly(monkeypatch):
    # the OpenCV 4.10 headless wheels have no cv2.utils.logging (prepare died on them)
    monkeypatch.delattr(cv2.utils, 'logging', raising=False)
    with images.quiet_native_stderr(), images.opencv_log_level('ERROR'):
        assert cv2.imdecode(np.frombuffer(b'not an image', np.uint8), cv2.IMREAD_COLOR) is None


# ------------------------------------------------------------------------------------------
# full disks, signals, what killed runs left
# ------------------------------------------------------------------------------------------
def temporaries_and_empty_files(root):
    return [os.path.join(folder, name) for folder, dirs, names in os.walk(root) for name in names + dirs
            if '.asid-tmp-' in name or (name.endswith('.png') and os.path.getsize(os.path.join(folder, name)) == 0)]


def test_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary(tmp_path):
    import resource
    import signal
    import subprocess
    import sys
    write_hr_images(str(tmp_path / 'hr'), [(96, 96)] * 4)

    def full_disk():  # no more than 3,000 bytes in any file (RLIMIT_FSIZE: EFBIG, as a full disk's ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    result = subprocess.run([sys.executable, '-m', 'basicsr_ext', 'prepare', 'div2k', '--input', 'hr', '--crop-size',
                             '96', '--step', '96', '--workers', '2'], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, preexec_fn=full_disk)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert re.fullmatch(r'basicsr prepare: error: cannot write datasets/DIV2K/\S+\.png: the disk is full; what was '
                        r'written before is complete and recorded, a rerun continues from there\n', result.stderr)
    assert temporaries_and_empty_files(tmp_path / 'datasets') == []


def test_a_signal_stops_prepare_with_one_line_and_the_count_so_far(tmp_path):
    import signal
    import subprocess
    import sys
    write_hr_images(str(tmp_path / 'hr'), [(240, 240)] * 40)
    process = subprocess.Popen([sys.executable, '-m', 'basicsr_ext', 'prepare', 'div2k', '--input', 'hr',
                                '--crop-size', '48', '--step', '48', '--workers', '2'], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert 'to process' in process.stdout.readline()  # the images are being prepared
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: to the command and its worker processes
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert re.fullmatch(r'basicsr prepare: stopped by SIGINT; \d+ of 40 images prepared and recorded; a rerun '
                        r'continues with the rest\n', err), err
    assert temporaries_and_empty_files(tmp_path / 'datasets') == []


def test_a_preparation_removes_what_a_killed_one_left_and_only_that(tmp_path, monkeypatch):
    import subprocess
    import sys
    monkeypatch.chdir(tmp_path)
    write_hr_images('hr', [(48, 48)])
    dead = subprocess.Popen([sys.executable, '-c', ''])
    dead.wait()
    hr_sub = tmp_path / 'datasets/DIV2K/DIV2K_train_HR_sub'
    hr_sub.mkdir(parents=True)
    killed = [hr_sub / f'.0000_s001.png.asid-tmp-{dead.pid}', tmp_path / f'datasets/DIV2K/.x.lmdb.asid-tmp-{dead.pid}.lmdb']
    killed[0].write_bytes(b'')
    killed[1].mkdir()
    users = hr_sub / '.notes.tmp'
    users.write_bytes(b'mine')
    assert div2k() == 0
    assert not any(p.exists() for p in killed) and users.exists()


def _realesrgan(tmp_path, sizes, **kwargs):
    folder = str(tmp_path / 'hr')
    images = write_hr_images(folder, sizes)
    sources = {stem: os.path.join(folder, f'{stem}.png') for stem in images}
    result = prepare.prepare_realesrgan(sources, str(tmp_path / 'out'), workers=1, log=lambda *a: None, **kwargs)
    return images, sources, result


def test_realesrgan_writes_multiscale_sub_images_listed_relative_to_dataroot_gt(tmp_path):
    images, _, result = _realesrgan(tmp_path, [(300, 240), (900, 600)], crop_size=200, step=100, min_size=64)
    out = tmp_path / 'out'
    lines = (out / 'meta_info_multiscale_sub.txt').read_text().splitlines()
    assert result['subimages'] == len(lines) and not result['errors']
    assert all(line.startswith('multiscale_sub/') and (out / line).is_file() for line in lines)
    # 0000 (shorter side 240 <= 400): T0, and 0.75 / 0.5 / (1/3: 80 px >= 64) copies; no 400 px copy
    tags = {re.match(r'multiscale_sub/0000(T\d)_s', line).group(1) for line in lines if '/0000T' in line}
    assert tags == {'T0', 'T1', 'T2', 'T3'}
    # 0001 (600 px wide): also T4 with the shorter side 400 px, by MATLAB bicubic
    t4 = read(out / 'multiscale_sub' / '0001T4_s001.png')
    assert t4.shape[1] == 200 and images['0001'].shape[1] * 400 // 600 == 400
    assert np.array_equal(read(out / 'multiscale_sub' / '0001T2_s001.png'),
                          matlab_bicubic_lr(images['0001'], 2)[:200, :200])
    assert np.array_equal(read(out / 'multiscale_sub' / '0000T0_s002.png'), images['0000'][:200, 40:240])


def test_realesrgan_second_run_is_up_to_date_and_a_removed_image_takes_its_sub_images_along(tmp_path, capsys):
    _, sources, _ = _realesrgan(tmp_path, [(200, 200), (220, 200)], crop_size=100, step=100, min_size=60)
    meta = tmp_path / 'out' / 'meta_info_multiscale_sub.txt'
    again = prepare.prepare_realesrgan(sources, str(tmp_path / 'out'), crop_size=100, step=100, min_size=60,
                                       workers=1)
    assert again['done'] == 0 and again['skipped'] == 2
    del sources['0001']
    prepare.prepare_realesrgan(sources, str(tmp_path / 'out'), crop_size=100, step=100, min_size=60, workers=1)
    assert not any('0001' in line for line in meta.read_text().splitlines())
    assert not [n for n in os.listdir(tmp_path / 'out' / 'multiscale_sub') if n.startswith('0001')]


def test_realesrgan_command_needs_input_or_demo_in_one_line(tmp_path, capsys):
    assert main(['prepare', 'realesrgan']) == 2
    assert capsys.readouterr().err == ('basicsr prepare: error: give either --input DIR (a folder of HR images) '
                                       'or --demo\n')

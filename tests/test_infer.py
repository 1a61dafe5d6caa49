"""``basicsr infer``: image files in, upscaled files out; formats, naming, tiling, bad input."""
import builtins
import errno
import io
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from asid_arch import ASID
from asid_arch.inference import ASIDUpsampler, NetworkCall
from basicsr_ext.commands import infer
from basicsr_ext.common.images import read_header
from basicsr_ext.commands.cli import main
from conftest import DATA

SUMMARY = re.compile(r'^done (\d+), skipped (\d+), failed (\d+) in \d+\.\d s'
                     r'(?: \([\d.]+ images/s(?:; [\d.]+ after the first)?\))?$', re.M)


def smooth(h, w, c=3, seed=0):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.5 + 0.4 * np.sin(x / (3 + seed + i) + y / 7) for i in range(c)], -1)


def img8(h, w, c=3, seed=0):
    out = (smooth(h, w, c, seed) * 255).round().astype(np.uint8)
    return out[..., 0] if c == 1 else out


@pytest.fixture(scope='module')
def tiny_net():
    torch.manual_seed(0)
    return ASID(upscale=2, num_groups=1, num_feat=8).eval()


@pytest.fixture(scope='module')
def ckpt(tiny_net, tmp_path_factory):
    """A BasicSR-format checkpoint of a tiny random x2 ASID."""
    path = tmp_path_factory.mktemp('ckpt') / 'net_g_tiny.pth'
    torch.save({'params': tiny_net.state_dict()}, path)
    return str(path)


@pytest.fixture(scope='module')
def api(tiny_net):
    return ASIDUpsampler(tiny_net, device='cpu')


def run(capsys, inp, out, ckpt, *extra):
    code = main(['infer', '-i', str(inp), '-o', str(out), '--model-path', str(ckpt), '--device', 'cpu', *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summary(stdout):
    match = SUMMARY.search(stdout)
    assert match, stdout
    return tuple(int(g) for g in match.groups())


def read(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def bgr(rgb):
    return rgb[..., [2, 1, 0, 3][:rgb.shape[2]]] if rgb.ndim == 3 else rgb


# ----------------------------------------------------------------------------------------
# formats
# ----------------------------------------------------------------------------------------
def test_rgb_png_is_upscaled_by_the_network_with_the_default_name(tmp_path, capsys, ckpt, api):
    src = img8(14, 18)  # BGR as cv2 writes it
    cv2.imwrite(str(tmp_path / 'photo.png'), src)
    code, out, err = run(capsys, tmp_path / 'photo.png', tmp_path / 'out', ckpt)
    assert code == 0, err
    assert summary(out) == (1, 0, 0)
    result = read(tmp_path / 'out' / 'photo_ASID_x2.png')
    np.testing.assert_array_equal(result, bgr(api.upscale(bgr(src))))
    assert 'photo.png: 18x14 -> 36x28, whole image' in err


def test_jpeg_stays_jpeg(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'a.jpg'), img8(10, 12))
    code, out, err = run(capsys, tmp_path / 'a.jpg', tmp_path / 'out', ckpt)
    assert code == 0, err
    data = open(tmp_path / 'out' / 'a_ASID_x2.jpg', 'rb').read()
    assert data[:2] == b'\xff\xd8'
    assert read(tmp_path / 'out' / 'a_ASID_x2.jpg').shape == (20, 24, 3)


@pytest.mark.parametrize('alpha', ['asid', 'bicubic'])
def test_alpha_png_gets_an_upscaled_alpha_reattached(tmp_path, capsys, ckpt, tiny_net, alpha):
    rgba = img8(12, 10, 4)
    rgba[..., 3] = (np.arange(10) * 25)[None, :]  # a ramp, not constant
    cv2.imwrite(str(tmp_path / 'icon.png'), rgba)
    code, out, err = run(capsys, tmp_path / 'icon.png', tmp_path / 'out', ckpt, '--alpha', alpha)
    assert code == 0, err
    result = read(tmp_path / 'out' / 'icon_ASID_x2.png')
    assert result.shape == (24, 20, 4)
    expected = ASIDUpsampler(tiny_net, device='cpu', alpha=alpha).upscale(bgr(rgba))
    np.testing.assert_array_equal(result, bgr(expected))
    if alpha == 'bicubic':
        assert result[..., 3].min() < 60 and result[..., 3].max() > 180  # the ramp survives


def test_grey_with_alpha_stays_grey_and_keeps_its_alpha(tmp_path, capsys, ckpt, tiny_net):
    # a grey + alpha PNG (OpenCV reads it as four channels) is upscaled as grey + alpha and written
    # as RGBA with equal colours (OpenCV writes no two-channel PNG); its --compare panels work too
    from PIL import Image
    grey = img8(12, 10, 1)
    ramp = np.broadcast_to((np.arange(10) * 25).astype(np.uint8)[None, :], grey.shape)
    Image.fromarray(np.stack([grey, ramp], -1), 'LA').save(tmp_path / 'la.png')
    code, out, err = run(capsys, tmp_path / 'la.png', tmp_path / 'out', ckpt, '--compare')
    assert code == 0, err
    result = read(tmp_path / 'out' / 'la_ASID_x2.png')
    assert result.shape == (24, 20, 4)
    assert (result[..., 0] == result[..., 1]).all() and (result[..., 1] == result[..., 2]).all()
    expected = ASIDUpsampler(tiny_net, device='cpu').upscale(np.stack([grey, ramp], -1))
    np.testing.assert_array_equal(result[..., [0, 3]], expected)
    assert (tmp_path / 'out' / 'la_ASID_x2_compare.png').exists()


def test_alpha_into_a_format_without_alpha_is_written_as_png(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'icon.png'), img8(8, 8, 4))
    code, out, err = run(capsys, tmp_path / 'icon.png', tmp_path / 'out', ckpt, '--ext', 'jpg')
    assert code == 0, err
    assert os.listdir(tmp_path / 'out') == ['icon_ASID_x2.png']
    assert '.jpg has no alpha: written as .png' in err


def test_colour_into_pgm_is_written_as_png_and_grey_into_ppm_as_three_equal_channels(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'colour.png'), img8(8, 8))
    cv2.imwrite(str(tmp_path / 'grey.png'), img8(8, 8, 1))
    code, out, err = run(capsys, tmp_path / 'colour.png', tmp_path / 'out', ckpt, '--ext', 'pgm')
    assert code == 0, err
    assert os.listdir(tmp_path / 'out') == ['colour_ASID_x2.png'] and '.pgm holds grey images only' in err
    code, out, err = run(capsys, tmp_path / 'grey.png', tmp_path / 'out', ckpt, '--ext', 'ppm')
    assert code == 0, err
    ppm = read(tmp_path / 'out' / 'grey_ASID_x2.ppm')
    assert ppm.shape == (16, 16, 3) and (ppm[..., 0] == ppm[..., 2]).all()


def test_a_tiff_with_an_exif_orientation_is_turned_upright_once(tmp_path, capsys, ckpt):
    from PIL import Image
    upright = img8(12, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(tmp_path / 'photo.tif', exif=exif)
    code, out, err = run(capsys, tmp_path / 'photo.tif', tmp_path / 'out', ckpt)
    assert code == 0, err
    assert read(tmp_path / 'out' / 'photo_ASID_x2.tif').shape == (24, 40, 3)  # upright, x2


def test_an_image_larger_than_pillows_guard_is_refused_by_its_declared_size_before_decoding(tmp_path, capsys, ckpt):
    import struct
    import zlib
    ihdr = struct.pack('>IIBBBBB', 20000, 10000, 8, 2, 0, 0, 0)  # 200 Mpx declared, its pixels never stored
    (tmp_path / 'pano.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b''.join(
        struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d)) for t, d in ((b'IHDR', ihdr),
                                                                                             (b'IEND', b''))))
    code, out, err = run(capsys, tmp_path / 'pano.png', tmp_path / 'out', ckpt)
    assert code == 1
    assert 'pano.png: output would be 40000x20000 = 800000000 pixels, more than --max-pixels' in err, err


def test_greyscale_is_processed_as_rgb_and_written_back_as_greyscale(tmp_path, capsys, ckpt, api):
    grey = img8(11, 13, 1)
    for ext in ('png', 'jpg'):
        cv2.imwrite(str(tmp_path / f'g.{ext}'), grey)
    code, out, err = run(capsys, tmp_path, tmp_path / 'out', ckpt)
    assert code == 0, err
    png = read(tmp_path / 'out' / 'g_ASID_x2.png')
    assert png.shape == (22, 26) and png.dtype == np.uint8
    np.testing.assert_array_equal(png, api.upscale(grey))
    assert read(tmp_path / 'out' / 'g_ASID_x2.jpg').ndim == 2


@pytest.mark.parametrize('ext', ['png', 'tif', 'tiff'])
def test_16_bit_images_are_computed_in_float_and_written_back_16_bit(tmp_path, capsys, ckpt, api, ext):
    deep = (smooth(10, 9) * 65535).round().astype(np.uint16)
    cv2.imwrite(str(tmp_path / f'deep.{ext}'), deep)
    code, out, err = run(capsys, tmp_path / f'deep.{ext}', tmp_path / 'out', ckpt)
    assert code == 0, err
    result = read(tmp_path / 'out' / f'deep_ASID_x2.{ext}')
    assert result.dtype == np.uint16 and result.shape == (20, 18, 3)
    np.testing.assert_array_equal(result, bgr(api.upscale(bgr(deep))))
    if ext == 'png':
        with Image.open(tmp_path / 'out' / 'deep_ASID_x2.png') as im:
            im.load()
        assert open(tmp_path / 'out' / 'deep_ASID_x2.png', 'rb').read()[24] == 16  # IHDR bit depth


def test_16_bit_greyscale_png_stays_16_bit_greyscale(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'g16.png'), (smooth(8, 8, 1)[..., 0] * 65535).astype(np.uint16))
    code, out, err = run(capsys, tmp_path / 'g16.png', tmp_path / 'out', ckpt)
    assert code == 0, err
    result = read(tmp_path / 'out' / 'g16_ASID_x2.png')
    assert result.dtype == np.uint16 and result.shape == (16, 16)


def test_16_bit_into_an_8_bit_format_is_written_8_bit_with_a_note(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'deep.png'), (smooth(8, 8) * 65535).astype(np.uint16))
    code, out, err = run(capsys, tmp_path / 'deep.png', tmp_path / 'out', ckpt, '--ext', 'jpg')
    assert code == 0, err
    assert read(tmp_path / 'out' / 'deep_ASID_x2.jpg').dtype == np.uint8
    assert '.jpg holds 8 bits per sample' in err


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied_like_pil(orientation):
    pil = Image.fromarray(img8(5, 7))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, 'PNG', exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    decoded = infer.decode(buf.getvalue())  # RGB, as stored
    found = read_header(buf.getvalue()).orientation
    assert found == orientation
    np.testing.assert_array_equal(infer.apply_orientation(decoded, found), upright)


def test_exif_rotated_jpeg_and_png_come_out_upright(tmp_path, capsys, ckpt, api):
    stored = img8(10, 16)[..., ::-1]  # RGB for PIL, 16 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / 'cam.jpg', exif=exif, quality=95)
    Image.fromarray(stored).save(tmp_path / 'cam2.png', exif=exif)
    code, out, err = run(capsys, tmp_path, tmp_path / 'out', ckpt)
    assert code == 0, err
    assert read(tmp_path / 'out' / 'cam_ASID_x2.jpg').shape == (32, 20, 3)  # upright: 10 wide, 16 high
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / 'cam2.png')))
    np.testing.assert_array_equal(read(tmp_path / 'out' / 'cam2_ASID_x2.png'), bgr(api.upscale(upright)))


def test_a_1x1_image_is_upscaled_like_any_other(tmp_path, capsys, ckpt, api):
    cv2.imwrite(str(tmp_path / 'dot.png'), np.array([[[10, 200, 90]]], np.uint8))
    code, out, err = run(capsys, tmp_path / 'dot.png', tmp_path / 'out', ckpt)
    assert code == 0, err
    result = read(tmp_path / 'out' / 'dot_ASID_x2.png')
    assert result.shape == (2, 2, 3)
    np.testing.assert_array_equal(result, bgr(api.upscale(np.array([[[90, 200, 10]]], np.uint8))))


# ----------------------------------------------------------------------------------------
# folders and naming
# ----------------------------------------------------------------------------------------
def test_folder_run_skips_non_images_with_a_note(tmp_path, capsys, ckpt):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), img8(8, 8))
    cv2.imwrite(str(folder / 'b.JPG'), img8(8, 8, seed=1))
    (folder / 'readme.txt').write_text('not an image')
    (folder / 'sub').mkdir()
    code, out, err = run(capsys, folder, tmp_path / 'out', ckpt)
    assert code == 0, err
    assert summary(out) == (2, 2, 0)
    assert sorted(os.listdir(tmp_path / 'out')) == ['a_ASID_x2.png', 'b_ASID_x2.jpg']
    assert re.search(r'skipped .*readme\.txt: not an image file', err)
    assert re.search(r'skipped .*sub: a folder', err)


def test_ext_and_suffix_choose_the_output_name_and_format(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', ckpt, '--ext', '.JPG', '--suffix', '_big')
    assert code == 0, err
    assert os.listdir(tmp_path / 'out') == ['a_big.jpg']
    assert open(tmp_path / 'out' / 'a_big.jpg', 'rb').read()[:2] == b'\xff\xd8'


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    target = tmp_path / 'out' / 'a_ASID_x2.png'
    assert run(capsys, tmp_path / 'a.png', tmp_path / 'out', ckpt)[0] == 0
    target.write_bytes(b'user data')
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', ckpt)
    assert code == 0 and summary(out) == (0, 1, 0)
    assert 'use --overwrite' in err and target.read_bytes() == b'user data'
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', ckpt, '--overwrite')
    assert code == 0 and summary(out) == (1, 0, 0)
    assert read(target).shape == (16, 16, 3)


def test_two_inputs_with_one_output_name_fail_the_second(tmp_path, capsys, ckpt):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.jpg'), img8(8, 8))
    cv2.imwrite(str(folder / 'a.png'), img8(8, 8, seed=1))
    code, out, err = run(capsys, folder, tmp_path / 'out', ckpt, '--ext', 'png')
    assert code == 1 and summary(out) == (1, 0, 1)
    assert re.search(r'^FAILED .*a\.png: output .*a_ASID_x2\.png is already the output of .*a\.jpg', err, re.M)


# ----------------------------------------------------------------------------------------
# tiling
# ----------------------------------------------------------------------------------------
def test_tile_option_matches_the_api_and_is_logged(tmp_path, capsys, ckpt, tiny_net):
    src = img8(40, 36)
    cv2.imwrite(str(tmp_path / 'a.png'), src)
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', ckpt, '--tile', '24', '--tile-overlap', '8')
    assert code == 0, err
    assert 'a.png: 36x40 -> 72x80, tiles of 24 px, overlap 8 px (4 tiles)' in err
    expected = ASIDUpsampler(tiny_net, device='cpu', tile=24, tile_overlap=8).upscale(bgr(src))
    np.testing.assert_array_equal(read(tmp_path / 'out' / 'a_ASID_x2.png'), bgr(expected))


def test_default_is_the_whole_image_and_tiles_when_it_would_not_fit(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(72, 70))
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', ckpt)
    assert code == 0 and 'a.png: 70x72 -> 140x144, whole image' in err
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out2', ckpt, '--max-memory', '0.0001')
    assert code == 0 and 'a.png: 70x72 -> 140x144, tiles of 64 px, overlap 24 px (4 tiles)' in err


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------
def _release_like_checkpoint(path):
    """Random weights in the exact key layout of the authors' ASID x4 release (a raw state_dict)."""
    shapes = json.load(open(os.path.join(DATA, 'keys-asid-x4.json')))
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in shapes.items()}
    torch.save(state, path)
    return state


def test_authors_raw_release_runs_in_value_range_minus_one_to_one(tmp_path, capsys):
    state = _release_like_checkpoint(tmp_path / 'ASID_x4.pth')
    src = img8(12, 10)
    cv2.imwrite(str(tmp_path / 'a.png'), src)
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', tmp_path / 'ASID_x4.pth')
    assert code == 0, err
    assert 'ASID x4 (3 groups, 48 features, value range [-1, 1])' in err
    result = read(tmp_path / 'out' / 'a_ASID_x4.png')
    nets = {}
    for vr in ((-1, 1), (0, 1)):
        nets[vr] = ASID(upscale=4, num_groups=3, value_range=vr)
        nets[vr].load_state_dict(state, strict=True)
    expected = ASIDUpsampler(nets[(-1, 1)], device='cpu').upscale(bgr(src))
    np.testing.assert_array_equal(result, bgr(expected))
    assert not np.array_equal(expected, ASIDUpsampler(nets[(0, 1)], device='cpu').upscale(bgr(src)))

    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out2', tmp_path / 'ASID_x4.pth',
                         '--value-range', '0,1')
    assert code == 0 and 'value range [0, 1]' in err


def test_value_range_minus_one_to_one_is_taken_as_a_separate_argument_too(tmp_path, capsys, ckpt):
    # argparse alone would read '-1,1' as an unknown option ("expected one argument")
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    for i, form in enumerate((['--value-range', '-1,1'], ['--value-range=-1,1'])):
        code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / f'out{i}', ckpt, *form)
        assert code == 0 and 'value range [-1, 1]' in err, err


def test_scale_or_groups_that_contradict_the_weights_are_one_error(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    for extra in (['--scale', '4'], ['--num-groups', '3']):
        code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', ckpt, *extra)
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and err.startswith('basicsr infer: error:'), err


def test_checkpoint_of_another_network_is_one_error_before_any_image_is_read(tmp_path, capsys, monkeypatch):
    from basicsr.archs.srresnet_arch import MSRResNet
    torch.save({'params': MSRResNet(num_feat=8, num_block=1, upscale=4).state_dict()}, tmp_path / 'srresnet.pth')
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))

    def no_reading(*args, **kwargs):
        raise AssertionError('an image was read')

    monkeypatch.setattr(infer, 'read_bytes', no_reading)
    monkeypatch.setattr(infer, 'list_inputs', no_reading)
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', tmp_path / 'srresnet.pth')
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'srresnet.pth' in lines[0] and 'not an ASID' in lines[0], err
    assert not (tmp_path / 'out').exists()


def test_missing_input_is_one_error(tmp_path, capsys, ckpt):
    code, out, err = run(capsys, tmp_path / 'nope', tmp_path / 'out', ckpt)
    assert code == 2 and 'does not exist' in err


# ----------------------------------------------------------------------------------------
# bad images
# ----------------------------------------------------------------------------------------
def test_bad_files_are_reported_by_name_and_the_others_still_processed(tmp_path, capsys, ckpt):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'good.png'), img8(8, 8))
    png = cv2.imencode('.png', img8(16, 16))[1].tobytes()
    jpg = cv2.imencode('.jpg', img8(16, 16))[1].tobytes()
    (folder / 'cut.png').write_bytes(png[:len(png) // 2])
    (folder / 'cut.jpg').write_bytes(jpg[:len(jpg) * 3 // 4])
    (folder / 'fake.png').write_bytes(b'this is text, not a PNG')
    (folder / 'empty.jpg').write_bytes(b'')
    cv2.imwrite(str(folder / 'huge.png'), img8(40, 30))
    code, out, err = run(capsys, folder, tmp_path / 'out', ckpt, '--max-pixels', str(50 * 50))
    assert code == 1
    assert summary(out) == (1, 0, 5)
    for name, why in (('cut.png', 'corrupt or truncated PNG image'), ('cut.jpg', 'corrupt or truncated JPEG image'),
                      ('fake.png', 'not an image'), ('empty.jpg', 'empty file')):
        assert re.search(rf'^FAILED .*{re.escape(name)}: {why}', err, re.M), err
    assert re.search(r'^FAILED .*huge\.png: output would be 60x80 = 4800 pixels, more than --max-pixels 2500$',
                     err, re.M), err
    assert os.listdir(tmp_path / 'out') == ['good_ASID_x2.png']


def test_unreadable_file_is_reported_and_the_others_still_processed(tmp_path, capsys, ckpt, monkeypatch):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), img8(8, 8))
    cv2.imwrite(str(folder / 'secret.png'), img8(8, 8))
    os.chmod(folder / 'secret.png', 0)
    if os.access(folder / 'secret.png', os.R_OK):  # root reads anything: make open() refuse as the OS would
        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if os.fspath(file).endswith('secret.png'):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(infer, 'open', refusing_open, raising=False)
    try:
        code, out, err = run(capsys, folder, tmp_path / 'out', ckpt)
    finally:
        os.chmod(folder / 'secret.png', 0o644)
    assert code == 1 and summary(out) == (1, 0, 1)
    assert re.search(r'^FAILED .*secret\.png: cannot read: Permission denied$', err, re.M), err


# ----------------------------------------------------------------------------------------
# progress and summary
# ----------------------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_over_images_and_tiles_on_a_terminal(tmp_path, capsys, ckpt, monkeypatch):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(40, 36))
    cv2.imwrite(str(tmp_path / 'b.png'), img8(8, 8))
    terminal = FakeTerminal()
    monkeypatch.setattr('sys.stderr', terminal)
    code = main(['infer', '-i', str(tmp_path), '-o', str(tmp_path / 'out'), '--model-path', ckpt, '--tile', '24',
                 '--tile-overlap', '8', '--device', 'cpu'])
    shown = terminal.getvalue()
    assert code == 0
    assert re.search(r'images: 100%\|.*\| 2/2', shown), shown
    assert re.search(r'a\.png: +\d+%\|.*\| \d/4 ', shown), shown  # the tiles of the large one
    assert summary(capsys.readouterr().out) == (2, 0, 0)


def test_quiet_prints_only_problems_and_the_summary(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    (tmp_path / 'b.png').write_bytes(b'junk')
    (tmp_path / 'notes.txt').write_text('not an image')
    code, out, err = run(capsys, tmp_path, tmp_path / 'out', ckpt, '--quiet')
    assert code == 1 and summary(out) == (1, 1, 1)
    assert err.strip().splitlines() == [f'FAILED {tmp_path / "b.png"}: not an image (no decoder recognises it)']
    code, out, err = run(capsys, tmp_path, tmp_path / 'out', ckpt, '--quiet')  # again: a.png's output exists
    assert summary(out) == (0, 3, 1) and len(err.strip().splitlines()) == 1  # and the out/ folder


def test_out_of_memory_on_one_image_fails_that_image_only(tmp_path, capsys, ckpt, monkeypatch):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    cv2.imwrite(str(tmp_path / 'big.png'), img8(9, 9))
    real = ASIDUpsampler.upscale

    def upscale(self, img, on_tile=None):
        if img.shape[0] == 9:
            raise RuntimeError('CUDA out of memory. Tried to allocate 20.00 GiB\nmore details')
        return real(self, img, on_tile)

    monkeypatch.setattr(ASIDUpsampler, 'upscale', upscale)
    code, out, err = run(capsys, tmp_path, tmp_path / 'out', ckpt)
    assert code == 1 and summary(out) == (1, 0, 1)
    assert re.search(r'^FAILED .*big\.png: RuntimeError: CUDA out of memory\. Tried to allocate 20\.00 GiB '
                     r'\(try --tile\)$', err, re.M), err


def infer_args(tmp_path, ckpt, *extra):
    """The parsed arguments of ``basicsr infer -i IN -o OUT --model-path CKPT --device cpu EXTRA``."""
    from basicsr_ext.commands.cli import build_parser
    return build_parser().parse_args(['infer', '-i', str(tmp_path), '-o', str(tmp_path / 'out'), '--model-path', ckpt,
                                      '--device', 'cpu', *extra])


def upsampler_for(args, images=()):
    """The upsampler ``basicsr infer`` builds for ``args`` and ``images``: network, decision, construction."""
    network, device = infer.load_network(args)
    speed = infer.plan_speed(args, device, list(images), infer.fits_whole(args, network, device))
    return infer.build_upsampler(args, network, device, speed.compile)


def test_no_kernels_option_turns_the_fused_kernels_off(ckpt, tmp_path):
    assert upsampler_for(infer_args(tmp_path, ckpt, '--fast-path', 'compile')).kernels == 'auto'
    assert upsampler_for(infer_args(tmp_path, ckpt, '--fast-path', 'compile', '--no-kernels')).kernels is False


def test_fast_path_option_compiles_in_the_upsampler_and_leaves_the_callers_network_alone(tiny_net, ckpt, tmp_path):
    args = infer_args(tmp_path, ckpt, '--fast-path', 'compile')
    assert upsampler_for(args).compiled
    assert not upsampler_for(infer_args(tmp_path, ckpt)).compiled
    up = ASIDUpsampler(tiny_net, device='cpu', compile=True)
    assert up.compiled and type(up.net) is type(tiny_net)  # the module itself is not wrapped
    assert tiny_net.input.weight.is_contiguous()  # the channels-last copy is the upsampler's own
    shared = ASIDUpsampler(tiny_net, device='cpu', compile=True, channels_last=False)
    assert shared.net.input.weight is tiny_net.input.weight  # fp32, default layout: the same weights, not a copy


def test_auto_fast_path_compiles_on_a_gpu_for_a_folder_of_same_size_frames(tmp_path):
    frames = []
    for i in range(infer.FRAMES_TO_COMPILE):
        frames.append(str(tmp_path / f'frame{i:03d}.png'))
        cv2.imwrite(frames[-1], np.full((18, 32, 3), i, np.uint8))
    odd = str(tmp_path / 'odd.png')
    cv2.imwrite(odd, np.zeros((20, 20, 3), np.uint8))
    broken = str(tmp_path / 'broken.png')
    open(broken, 'wb').write(b'not a png')  # its FAILED line comes later; it does not stop the count
    gpu, cpu = torch.device('cuda'), torch.device('cpu')
    assert infer.frames_to_compile(frames + [odd, broken], gpu) == ((32, 18), infer.FRAMES_TO_COMPILE)
    assert infer.frames_to_compile(frames[1:] + [odd], gpu) is None  # too few of one size to pay for compiling
    assert infer.frames_to_compile(frames, cpu) is None  # on a CPU the default path is already the fast one


def test_infer_builds_the_upsampler_compiled_for_the_frames_size(tmp_path, ckpt, monkeypatch, capsys):
    # the decision is the GPU's (frames_to_compile); here it is forced, to check the wiring on a CPU
    for i in range(2):
        cv2.imwrite(str(tmp_path / f'{i}.png'), np.full((12, 16, 3), 60 * i, np.uint8))
    compiled = []
    monkeypatch.setattr(infer, 'frames_to_compile', lambda images, device: ((16, 12), len(images)))
    monkeypatch.setattr(ASIDUpsampler, 'compile_network', lambda self, sizes=None: compiled.append(sizes))
    assert main(['infer', '-i', str(tmp_path), '-o', str(tmp_path / 'out'), '--model-path', ckpt]) == 0
    assert compiled == [[(12, 16)]]  # (height, width) of the frames, once, when the upsampler is built
    assert '2 inputs of 16x12: the network is compiled for them' in capsys.readouterr().err


def test_compiling_for_the_frames_size_leaves_other_sizes_eager(tiny_net):
    # --fast-path auto compiles for the frames' size only: an odd image must not compile again
    up = ASIDUpsampler(tiny_net, device='cpu', compile=[(18, 32)])
    seen = []

    def compiled(x):
        seen.append(tuple(x.shape[-2:]))
        return NetworkCall(up.net, None, up.compiled_memory_format)(x)

    up._network = compiled
    up.upscale_tensor(torch.rand(3, 18, 32))
    up.upscale_tensor(torch.rand(3, 20, 20))
    assert seen == [(18, 32)]


def test_upscale_frames_gives_what_upscale_gives_for_each_frame(api):
    frames = [img8(12, 16, seed=i) for i in range(3)]
    batched = api.upscale_frames(frames, pad_to=4)  # a last, shorter batch is padded: one compiled shape
    assert len(batched) == 3
    for frame, out in zip(frames, batched):
        assert out.dtype == np.uint8 and out.shape == (12 * api.scale, 16 * api.scale, 3)
        assert np.abs(out.astype(int) - api.upscale(frame).astype(int)).max() <= 1  # float rounding, batched
    deep = [(f.astype(np.uint16) * 257) for f in frames[:2]]
    assert api.upscale_frames(deep)[1].dtype == np.uint16
    with pytest.raises(ValueError, match='one shape and dtype'):
        api.upscale_frames([frames[0], img8(12, 12)])
    with pytest.raises(ValueError, match='HxWx3'):
        api.upscale_frames([img8(12, 16, c=4)])


def test_a_network_compiled_for_batches_of_frames_runs_single_images_eagerly(tiny_net):
    up = ASIDUpsampler(tiny_net, device='cpu', compile=[(4, 18, 32)])
    seen = []

    def compiled(x):
        seen.append(tuple(x.shape))
        return NetworkCall(up.net, None, up.compiled_memory_format)(x)

    up._network = compiled
    up.upscale_tensor(torch.rand(4, 3, 18, 32))
    up.upscale_tensor(torch.rand(3, 18, 32))  # an RGBA or grey image of the frames' size: no second compilation
    assert seen == [(4, 3, 18, 32)]


def frame_folder(tmp_path, count=7):
    src = tmp_path / 'frames'
    src.mkdir()
    for i in range(count):
        cv2.imwrite(str(src / f'f{i:02d}.png'), img8(12, 16, seed=i))
    return src


def test_a_folder_of_frames_is_upscaled_in_batches_as_one_at_a_time(tmp_path, ckpt, capsys, monkeypatch):
    src = frame_folder(tmp_path)
    cv2.imwrite(str(src / 'g_alpha.png'), img8(12, 16, c=4))  # the frames' size, but RGBA: on its own
    cv2.imwrite(str(src / 'h_odd.png'), img8(10, 10))
    (src / 'i_broken.png').write_bytes(b'not a png')
    calls = []
    run_network = ASIDUpsampler.run_network
    monkeypatch.setattr(ASIDUpsampler, 'run_network', lambda self, x: calls.append(x.shape[0]) or run_network(self, x))
    assert main(['infer', '-i', str(src), '-o', str(tmp_path / 'one'), '--model-path', ckpt, '-q']) == 1
    assert set(calls) == {1}
    calls.clear()
    assert main(['infer', '-i', str(src), '-o', str(tmp_path / 'three'), '--model-path', ckpt, '--batch', '3']) == 1
    out, err = capsys.readouterr()
    assert sorted(calls) == [1, 1, 1, 3, 3, 3]  # 7 frames: 3 + 3 + 1 padded to 3; alpha is 2 passes; the odd one
    assert '3 frames in one call' in err and '1 frames in one call' in err
    assert re.search(r'^FAILED .*i_broken\.png', err, re.M)
    assert summary(out)[:3] == (9, 0, 1)
    for name in sorted(os.listdir(tmp_path / 'one')):
        one = cv2.imread(str(tmp_path / 'one' / name), cv2.IMREAD_UNCHANGED).astype(int)
        three = cv2.imread(str(tmp_path / 'three' / name), cv2.IMREAD_UNCHANGED).astype(int)
        assert np.abs(one - three).max() <= 1, name


def test_a_frame_whose_output_is_not_finite_fails_alone_out_of_its_batch(tmp_path, ckpt, capsys, monkeypatch):
    src = frame_folder(tmp_path, count=4)
    cv2.imwrite(str(src / 'f01.png'), np.zeros((12, 16, 3), np.uint8))  # this frame's output will be NaN
    run_network = ASIDUpsampler.run_network

    def nan_for_black_frames(self, x):
        out = run_network(self, x)
        out[x.flatten(1).amax(1) == 0] = float('nan')
        return out

    monkeypatch.setattr(ASIDUpsampler, 'run_network', nan_for_black_frames)
    assert main(['infer', '-i', str(src), '-o', str(tmp_path / 'out'), '--model-path', ckpt, '--batch', '4',
                 '-q']) == 1
    out, err = capsys.readouterr()
    assert re.findall(r'^FAILED (.*): the network gave NaN', err, re.M) == [str(src / 'f01.png')]
    assert summary(out)[:3] == (3, 0, 1)


@pytest.mark.parametrize('fits', [True, False])
def test_on_a_gpu_frames_are_compiled_for_batches_of_four_when_they_fit(tmp_path, ckpt, fits):
    src = frame_folder(tmp_path, count=infer.FRAMES_TO_COMPILE + 1)
    cv2.imwrite(str(src / 'odd.png'), img8(10, 10))
    speed = infer.plan_speed(infer_args(src, ckpt), torch.device('cuda'), sorted(str(p) for p in src.iterdir()),
                             fits=lambda height, width, batch: fits)
    if fits:
        assert (speed.batch, speed.frame_size) == (infer.GPU_FRAME_BATCH, (12, 16))
        assert speed.compile == [(infer.GPU_FRAME_BATCH, 12, 16)]
    else:  # a batch would be cut into tiles: frames one at a time, compiled for that
        assert speed.batch == 1 and speed.compile == [(12, 16)]


def test_frames_stored_turned_are_planned_by_their_upright_size(tmp_path, ckpt):
    src = tmp_path / 'frames'
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 16 wide and 12 high, shown (and upscaled) 12 wide and 16 high
    for i in range(infer.FRAMES_TO_COMPILE):
        Image.fromarray(img8(12, 16, seed=i)).save(src / f'f{i:02d}.jpg', exif=exif)
    speed = infer.plan_speed(infer_args(src, ckpt), torch.device('cuda'), sorted(str(p) for p in src.iterdir()),
                             fits=lambda height, width, batch: True)
    assert speed.frame_size == (16, 12) and speed.compile == [(infer.GPU_FRAME_BATCH, 16, 12)]


@pytest.mark.parametrize('option, value, message', [('--batch', '0', '--batch must be positive, got 0'),
                                                    ('--max-memory', '0', '--max-memory must be a positive number of '
                                                     'GiB, got 0'),
                                                    ('--max-memory', '-1.5', 'got -1.5')])
def test_batch_and_memory_must_be_positive(tmp_path, ckpt, capsys, option, value, message):
    assert main(['infer', '-i', str(tmp_path), '-o', str(tmp_path / 'o'), '--model-path', ckpt, option, value]) == 2
    assert message in capsys.readouterr().err


def test_an_output_folder_it_cannot_write_in_is_one_line_before_any_image_is_upscaled(tmp_path, ckpt, capsys,
                                                                                      monkeypatch):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    out = tmp_path / 'out'
    out.mkdir()
    access = os.access  # a read-only mount, as the system reports it (root writes in a folder of mode 555)
    monkeypatch.setattr(infer.os, 'access', lambda path, mode: path != str(out) and access(path, mode))
    code, stdout, err = run(capsys, tmp_path / 'a.png', out, ckpt)
    assert code == 2 and err.strip().splitlines()[-1] == f'basicsr infer: error: cannot write in output folder {out}'
    assert 'FAILED' not in err and os.listdir(out) == []


def test_batches_of_a_folder_without_a_readable_image_are_nothing_to_do(tmp_path, ckpt, capsys):
    (tmp_path / 'broken.png').write_bytes(b'not a png')
    assert main(['infer', '-i', str(tmp_path), '-o', str(tmp_path / 'o'), '--model-path', ckpt, '--batch', '2']) == 1
    out, err = capsys.readouterr()
    assert summary(out)[:3] == (0, 0, 1) and 'FAILED' in err
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert main(['infer', '-i', str(empty), '-o', str(tmp_path / 'o2'), '--model-path', ckpt, '--batch', '2']) == 0


def test_outputs_are_written_by_threads_and_a_failed_write_fails_only_its_image(tmp_path, ckpt, capsys,
                                                                               monkeypatch):
    import threading
    src = frame_folder(tmp_path, count=6)
    writers, real_write = set(), infer.write_atomically

    def write_atomically(path, data):
        writers.add(threading.current_thread().name)
        if 'f03' in path:  # the disk fills up for this one
            raise infer.ImageError(f'cannot write {path}: No space left on device')
        return real_write(path, data)

    monkeypatch.setattr(infer, 'write_atomically', write_atomically)
    monkeypatch.setattr(infer, 'MAX_WAITING_OUTPUTS', 2)  # the network waits for the writers: that path too
    assert main(['infer', '-i', str(src), '-o', str(tmp_path / 'out'), '--model-path', ckpt, '--batch', '2',
                 '-q']) == 1
    out, err = capsys.readouterr()
    assert all(name.startswith('basicsr-infer-write') for name in writers), writers
    assert re.findall(r'^FAILED (.*): cannot write .*No space left on device$', err, re.M) == [str(src / 'f03.png')]
    assert summary(out)[:3] == (5, 0, 1)
    assert sorted(os.listdir(tmp_path / 'out')) == [f'f{i:02d}_ASID_x2.png' for i in (0, 1, 2, 4, 5)]


def test_the_summary_reports_images_per_second(tmp_path, ckpt, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f'{i}.png'), np.full((12, 12, 3), 40 * i, np.uint8))
    assert main(['infer', '-i', str(src), '-o', str(tmp_path / 'out'), '--model-path', ckpt, '-q']) == 0
    out = capsys.readouterr().out
    assert re.search(r'^done 3, skipped 0, failed 0 in \d+\.\d s \([\d.]+ images/s; [\d.]+ after the first\)$',
                     out, re.M), out


def test_a_corrupt_png_is_one_line_naming_it_without_opencvs_own_log(ckpt, tmp_path, capfd):
    folder = tmp_path / 'in'
    folder.mkdir()
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    cv2.imwrite(str(folder / 'good.png'), img8(8, 8)[..., ::-1])
    assert main(['infer', '-i', str(folder), '-o', str(tmp_path / 'out'), '--model-path', ckpt, '--device', 'cpu',
                 '-q']) == 1
    err = capfd.readouterr().err
    assert 'broken.png' in err and 'IHDR' not in err and 'ERROR' not in err
    assert (tmp_path / 'out' / 'good_ASID_x2.png').is_file()


# ----------------------------------------------------------------------------------------
# faults: broken weights, runs in place, Ctrl-C, animations
# ----------------------------------------------------------------------------------------
def test_nan_weights_are_one_error_naming_the_checkpoint_not_black_images(tmp_path, capsys, tiny_net):
    state = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    state['up.0.weight'][0] = float('nan')
    torch.save({'params': state}, tmp_path / 'nan.pth')
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', tmp_path / 'nan.pth')
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and 'nan.pth: up.0.weight holds NaN or infinite values' in err, err
    assert not (tmp_path / 'out').exists()


def test_non_finite_output_fails_the_image_instead_of_writing_it(tmp_path, capsys, tiny_net):
    state = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    state['up.0.weight'].fill_(3e38)  # finite weights whose output overflows to infinity
    torch.save({'params': state}, tmp_path / 'huge.pth')
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', tmp_path / 'huge.pth')
    assert code == 1 and summary(out) == (0, 0, 1)
    assert re.search(r'^FAILED .*a\.png: the network gave NaN or infinite values', err, re.M), err
    assert os.listdir(tmp_path / 'out') == []


def test_checkpoint_that_does_not_record_its_value_range_says_so_on_the_model_line(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / 'a.png'), img8(8, 8))
    code, out, err = run(capsys, tmp_path / 'a.png', tmp_path / 'out', ckpt)
    assert code == 0
    model_line = err.splitlines()[0]
    assert 'value range [0, 1]' in model_line and 'assumed' in model_line and '--value-range' in model_line


def test_an_output_never_replaces_an_input(tmp_path, capsys, ckpt):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), img8(8, 8))
    before = (folder / 'a.png').read_bytes()
    code, out, err = run(capsys, folder, folder, ckpt, '--suffix', '', '--overwrite')
    assert code == 1 and summary(out) == (0, 0, 1)
    assert 'a.png would replace an input image' in err
    assert (folder / 'a.png').read_bytes() == before and os.listdir(folder) == ['a.png']
    # nor one whose name differs in case only: the same file on macOS and Windows (the output's
    # extension is written in lower case)
    cv2.imwrite(str(folder / 'UP.PNG'), img8(8, 8))
    code, out, err = run(capsys, folder / 'UP.PNG', folder, ckpt, '--suffix', '')
    assert code == 1 and 'UP.png would replace an input image' in err
    assert sorted(os.listdir(folder)) == ['UP.PNG', 'a.png']


def test_rerun_into_the_input_folder_skips_its_earlier_outputs(tmp_path, capsys, ckpt):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), img8(8, 8))
    assert run(capsys, folder, folder, ckpt)[0] == 0
    code, out, err = run(capsys, folder, folder, ckpt, '--overwrite')
    assert code == 0 and summary(out) == (1, 1, 0)
    assert 'skipped ' + str(folder / 'a_ASID_x2.png') + ': an output of basicsr infer' in err
    assert sorted(os.listdir(folder)) == ['a.png', 'a_ASID_x2.png']


@pytest.mark.parametrize('earlier, ending', [('a_ASID_x2.png', '_ASID_x2'), ('a_ASID_x4.png', '_ASID_x4'),
                                              ('a_ASID_x2_compare.png', '_ASID_x2')])
def test_rerun_into_the_input_folder_with_another_suffix_leaves_default_named_outputs_of_any_scale_alone(
        earlier, ending, tmp_path, capsys, ckpt):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), img8(8, 8))
    cv2.imwrite(str(folder / earlier), img8(16, 16))  # an earlier run's output (this checkpoint is x2)
    code, out, err = run(capsys, folder, folder, ckpt, '--suffix', '_v2')
    assert code == 0 and summary(out) == (1, 1, 0)
    assert f'skipped {folder / earlier}: an output of basicsr infer (its name ends with {ending})' in err
    assert sorted(os.listdir(folder)) == sorted(['a.png', earlier, 'a_v2.png'])


@pytest.mark.parametrize('signum', ['SIGINT', 'SIGTERM'])  # Ctrl-C; slurm, timeout, kill
def test_a_signal_prints_one_line_and_the_summary_so_far_and_exits_128_plus_its_number(signum, tmp_path, ckpt):
    import signal
    import subprocess
    import sys
    signum = getattr(signal, signum)
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), img8(8, 8))
    os.mkfifo(folder / 'b.png')  # reading it waits until a writer comes: none does, so the signal finds it there
    (tmp_path / 'out').mkdir()
    dead = subprocess.Popen([sys.executable, '-c', ''])
    dead.wait()
    killed_write = tmp_path / 'out' / f'.b_ASID_x2.png.asid-tmp-{dead.pid}'  # left by a run killed while writing
    killed_write.write_bytes(b'\x89PNG')
    proc = subprocess.Popen([sys.executable, '-m', 'basicsr_ext', 'infer', '-i', str(folder), '-o',
                             str(tmp_path / 'out'), '--model-path', ckpt, '--device', 'cpu'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # the per-image line of a.png: the run is in its loop over the images
        seen.append(line)
        if 'a.png:' in line:
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    err = ''.join(seen) + err
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert 'Traceback' not in err and err.count(f'basicsr infer: stopped by {name}') == 1, err
    assert summary(out)[1:] == (0, 0)
    assert summary(out)[0] == len(os.listdir(tmp_path / 'out'))  # a write under way was finished and counted
    for name in os.listdir(tmp_path / 'out'):  # only complete outputs
        assert read(tmp_path / 'out' / name).shape == (16, 16, 3)


def test_an_animated_gif_is_refused_rather_than_cut_to_its_first_frame(tmp_path, capsys, ckpt):
    frames = [Image.fromarray(img8(8, 8, seed=i)) for i in range(3)]
    frames[0].save(tmp_path / 'anim.gif', save_all=True, append_images=frames[1:], duration=100)
    code, out, err = run(capsys, tmp_path / 'anim.gif', tmp_path / 'out', ckpt)
    assert code == 1 and summary(out) == (0, 0, 1)
    assert 'anim.gif: animated image (3 frames): only still images are upscaled' in err, err


def test_a_multi_page_tiff_is_refused_by_its_pages_not_called_animated(tmp_path, capsys, ckpt):
    pages = [Image.fromarray(img8(8, 8, seed=i)) for i in range(2)]
    pages[0].save(tmp_path / 'scan.tif', save_all=True, append_images=pages[1:])
    code, out, err = run(capsys, tmp_path / 'scan.tif', tmp_path / 'out', ckpt)
    assert code == 1 and summary(out) == (0, 0, 1)
    assert 'scan.tif: multi-page TIFF (2 pages): only single images are upscaled; split the pages first' in err, err


def test_compare_writes_input_bicubic_output_side_by_side_per_image_and_never_takes_them_as_inputs(
        tmp_path, capsys, ckpt):
    from basicsr_ext.common import compare
    from basicsr_ext.common.images import bicubic_upscale
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), bgr(img8(20, 30)))
    cv2.imwrite(str(folder / 'g.png'), img8(16, 12, c=1))  # grey: shown in three channels
    code, out, _ = run(capsys, folder, folder, ckpt, '--compare', '-q')
    assert code == 0 and summary(out) == (2, 0, 0)
    sheet, output = read(folder / 'a_ASID_x2_compare.png'), read(folder / 'a_ASID_x2.png')
    bar, gap = compare.BAR, compare.GAP
    assert sheet.shape == (bar + 40, 3 * 60 + 2 * gap, 3)
    panels = [sheet[bar:, i * (60 + gap):i * (60 + gap) + 60] for i in range(3)]
    lq = read(folder / 'a.png')
    assert np.array_equal(panels[0], cv2.resize(lq, (60, 40), interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(panels[1], bicubic_upscale(lq, 2))
    assert np.array_equal(panels[2], output)
    assert not np.array_equal(sheet[:bar, :60], np.zeros((bar, 60, 3), np.uint8))  # a label is written there
    assert read(folder / 'g_ASID_x2_compare.png').shape == (bar + 32, 3 * 24 + 2 * gap, 3)
    # a second run over the same folder: neither outputs nor comparison images are inputs
    code, out, err = run(capsys, folder, folder, ckpt, '--compare')
    assert summary(out) == (0, 2 + 4, 0)  # two inputs with outputs, four earlier outputs
    assert f'skipped {folder}/a_ASID_x2_compare.png: an output of basicsr infer' in err

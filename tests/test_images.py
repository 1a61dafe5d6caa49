"""basicsr_ext.common.images: the one image reader of prepare, infer and the data checks."""
import cv2
import numpy as np
import pytest

from basicsr_ext.common import images
from conftest import make_image


@pytest.mark.parametrize('ext', ['.png', '.jpg', '.bmp', '.webp'])
def test_load_image_decodes_a_sound_image_once_and_as_opencv_reads_it(ext, tmp_path, monkeypatch):
    path = str(tmp_path / f'a{ext}')
    cv2.imwrite(path, make_image(40, 56, 1))
    expected = cv2.imread(path, cv2.IMREAD_COLOR)
    decodes = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, 'imdecode', lambda *a: decodes.append(1) or real_imdecode(*a))
    monkeypatch.setattr(images, '_diagnose', lambda data: pytest.fail('a sound image was decoded twice'))
    img = images.load_image(path)
    assert decodes == [1]
    assert np.array_equal(img, expected)


def test_one_extension_list_for_every_command():
    from basicsr_ext.commands import infer, precision_check, prepare  # noqa: F401
    for name in ('a.png', 'b.JPG', 'c.jpeg', 'd.tiff', 'e.webp', 'f.pgm'):
        assert images.is_image_name(name), name
    assert not images.is_image_name('notes.txt') and not images.is_image_name('net.pth')
    assert prepare.IMAGE_EXTENSIONS is images.IMAGE_EXTENSIONS
    assert not hasattr(infer, 'IMAGE_EXTENSIONS') and not hasattr(precision_check, 'IMAGE_EXTENSIONS')


def test_the_header_reader_reads_a_png_header_without_decoding_its_pixels(tmp_path, monkeypatch):
    # a DIV2K-sized data set has 64,000 images whose sizes are read before training: decoding each
    # (as Pillow's getexif() does for PNGs) took minutes there
    from PIL import ImageFile
    path = str(tmp_path / 'a.png')
    cv2.imwrite(path, make_image(40, 56, 0))

    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, 'load', lambda self, *a, **k: decoded.append(self))
    header = images.read_header(path)
    assert (header.width, header.height, header.orientation) == (56, 40, 1)
    assert decoded == []


def test_the_header_reader_finds_the_orientation_of_a_png_whose_exif_follows_the_pixels(tmp_path, monkeypatch):
    # PNG allows the eXIf chunk after the image data; basicsr infer turns such a photo upright too
    import struct
    import zlib

    from PIL import Image, ImageFile
    png = cv2.imencode('.png', make_image(40, 56, 0))[1].tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    data = exif.tobytes()
    data = data[6:] if data.startswith(b'Exif\x00\x00') else data  # a PNG chunk holds the TIFF bytes alone
    chunk = struct.pack('>I', len(data)) + b'eXIf' + data + struct.pack('>I', zlib.crc32(b'eXIf' + data))
    iend = png.rindex(b'IEND') - 4
    path = tmp_path / 'late_exif.png'
    path.write_bytes(png[:iend] + chunk + png[iend:])
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 6  # what Pillow says after decoding the pixels
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, 'load', lambda self, *a, **k: decoded.append(self))
    assert images.read_header(str(path)).orientation == 6
    assert images.read_header(path.read_bytes()).orientation == 6
    assert images.read_header(str(path), orientation=False).orientation == 1  # the size alone: not looked for
    assert decoded == []

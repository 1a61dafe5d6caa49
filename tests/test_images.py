"""basicsr_ext.common.images: the one image reader of prepare, infer and the data checks."""
import io

import cv2
import numpy as np
import pytest

from basicsr_ext.common import images
from conftest import make_image


@pytest.mark.parametrize('ext', ['.png', '.jpg', '.bmp', '.webp', '.tif', '.ppm'])
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


def _with_orientation(img, fmt, orientation):
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, exif=exif)
    return buf.getvalue()


def test_a_tiff_is_read_upright_by_opencv_and_pillow_so_its_orientation_is_not_applied_again():
    for orientation in (3, 6):
        data = _with_orientation(make_image(48, 80, 0), 'TIFF', orientation)
        header = images.read_header(data)
        assert header.orientation == 1  # OpenCV turned the pixels already
        assert (header.width, header.height) == (images.decode(data).shape[1], images.decode(data).shape[0])


def test_an_orientation_tag_that_is_not_a_number_from_1_to_8_means_as_stored():
    import struct

    from PIL import Image
    for kind, value in ((2, b'6\x00\x00\x00'), (3, struct.pack('<HH', 9, 0))):  # ASCII '6'; SHORT 9
        ifd = b'II*\x00' + struct.pack('<IH', 8, 1) + struct.pack('<HHI', 0x0112, kind, 2 if kind == 2 else 1) \
            + value + struct.pack('<I', 0)
        buf = io.BytesIO()
        Image.fromarray(make_image(12, 16, 0)).save(buf, 'JPEG', exif=b'Exif\x00\x00' + ifd)
        with Image.open(buf) as im:
            assert im.getexif().get(0x0112) in ('6', 9)
        assert images.read_header(buf.getvalue()).orientation == 1, value


def test_the_header_reader_tells_the_size_of_an_image_past_pillows_decompression_bomb_guard():
    import struct
    import zlib

    from PIL import Image
    ihdr = struct.pack('>IIBBBBB', 40000, 20000, 8, 2, 0, 0, 0)  # 800 Mpx declared, no pixels stored
    png = b'\x89PNG\r\n\x1a\n' + b''.join(struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
                                          for t, d in ((b'IHDR', ihdr), (b'IEND', b'')))
    header = images.read_header(png)
    assert (header.width, header.height) == (40000, 20000)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # the guard is back for everyone else


def test_an_image_cut_short_that_opencv_still_decodes_is_refused(monkeypatch):
    # OpenCV 4.x returns a truncated JPEG as an image, grey where the data ends
    jpg = cv2.imencode('.jpg', make_image(64, 64, 0))[1].tobytes()
    cut = jpg[:len(jpg) * 3 // 4]
    monkeypatch.setattr(images, 'decode', lambda data, flags=None: np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(images.UnreadableImage, match='corrupt or truncated JPEG image'):
        images.decode_verified(cut)
    assert images.decode_verified(jpg).shape == (64, 64, 3)


@pytest.mark.parametrize('ext, params', [('.tif', []), ('.tif', [cv2.IMWRITE_TIFF_COMPRESSION, 1]), ('.ppm', []),
                                         ('.pgm', [])])
@pytest.mark.parametrize('kept', [0.5, 0.9, -1])
def test_opencv_refuses_a_tiff_or_pnm_cut_short_itself_so_no_second_decoder_judges_them(ext, params, kept):
    # what looks_complete trusts: a truncated TIFF (libtiff) or PNM (OpenCV's reader) does not decode
    data = cv2.imencode(ext, make_image(48, 40, 0)[..., :3 if ext != '.pgm' else 1], params)[1].tobytes()
    assert images.looks_complete(data) and images.decode(data) is not None
    cut = data[:int(len(data) * kept)] if kept > 0 else data[:kept]
    assert images.decode(cut) is None
    with pytest.raises(images.UnreadableImage, match='corrupt or truncated'):
        images.decode_verified(cut)


def test_quiet_blocks_of_several_threads_share_one_silence_and_give_stderr_back():
    # a pool decoding a folder: thread A silences, B enters, A leaves first, B last; had each block
    # saved and restored fd 2 on its own, B would "restore" A's /dev/null and stderr would stay lost
    import os
    import threading

    def where_fd2_points():
        st = os.fstat(2)
        return st.st_dev, st.st_ino

    before = where_fd2_points()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with images.quiet_native_stderr():
            seen['a'] = where_fd2_points()
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with images.quiet_native_stderr():
            b_in.set()
            a_out.wait(5)
            seen['b'] = where_fd2_points()  # A has left: still silent while B is inside

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    devnull = os.stat(os.devnull)
    assert seen['a'] == seen['b'] == (devnull.st_dev, devnull.st_ino)
    assert where_fd2_points() == before


def test_a_child_forked_while_another_thread_is_quiet_has_its_stderr_back():
    # a pool decoding in threads while the main thread forks (a DataLoader worker): the child
    # has none of those threads, so nothing in it would ever end their silence
    import os
    import threading
    inside, done = threading.Event(), threading.Event()

    def quiet_thread():
        with images.quiet_native_stderr():
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=quiet_thread)
    thread.start()
    inside.wait(5)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: where does fd 2 point, and does a quiet block of its own give it back?
        try:
            with images.quiet_native_stderr():
                pass
            os.write(write_end, b'%d %d' % (os.fstat(2).st_ino, images._QUIET['depth']))
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 100).decode().split()
    os.waitpid(pid, 0)
    os.close(read_end)
    done.set()
    thread.join(10)
    devnull = os.stat(os.devnull).st_ino
    assert int(child[0]) != devnull and child[1] == '0', child

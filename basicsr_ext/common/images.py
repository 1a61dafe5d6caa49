"""Reading images, shared by ``basicsr prepare``, ``infer`` and the data checks of ``train``/``test``.

One list of image extensions, one header reader (:func:`read_header`: size, EXIF orientation and
frames without decoding), one OpenCV decoder (:func:`decode`, quiet: a failure is reported
by the caller on one line naming the file, never by OpenCV's or libpng's own log), the
MATLAB-compatible bicubic resizing of SR papers, and :func:`load_image`, which reads an image
as BasicSR's datasets do and says what is wrong with a broken one.
"""
import contextlib
import os
import struct
import sys
import threading
from typing import NamedTuple

import cv2
import numpy as np

#: Files taken as images, by extension (case-insensitive): what OpenCV reads.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.jpe', '.bmp', '.dib', '.tif', '.tiff', '.webp', '.ppm', '.pgm',
                    '.pnm', '.pbm')


def is_image_name(name):
    """True if ``name`` has one of :data:`IMAGE_EXTENSIONS`."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------------------
# quieting OpenCV and the libraries under it
# ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def opencv_log_level(level):
    """OpenCV's own log at ``level`` ('SILENT', 'ERROR', ...) inside the block; nothing to do
    for OpenCV builds without ``cv2.utils.logging`` (e.g. the 4.10 headless wheels)."""
    logging = getattr(cv2.utils, 'logging', None)
    if logging is None:
        yield
        return
    saved = logging.getLogLevel()
    logging.setLogLevel(getattr(logging, f'LOG_LEVEL_{level}'))
    try:
        yield
    finally:
        logging.setLogLevel(saved)


#: The silence of :func:`quiet_native_stderr`: how many blocks are inside it, and how to end it.
_QUIET = {'depth': 0, 'undo': None}
_QUIET_LOCK = threading.Lock()


def _quiet_in_child():
    """After a fork: a new lock (the parent's may have been held by another thread), and stderr
    back if another thread was inside a quiet block (nothing in the child would ever leave it)."""
    global _QUIET_LOCK
    _QUIET_LOCK = threading.Lock()
    if _QUIET['depth'] > 0:
        _QUIET['depth'] = 0
        _QUIET['undo'].close()


os.register_at_fork(after_in_child=_quiet_in_child)


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what OpenCV and the image libraries under it print to stderr themselves (its
    log, libpng's warnings such as 'iCCP: ... invalid rendering intent' on scikit-image's
    bundled photographs): the file was checked already, and a reported failure names it.

    File descriptor 2 and OpenCV's log level belong to the process: blocks nested or run at once
    by several threads (a pool decoding a folder) share one silence, begun by the first block in
    and ended by the last out, so stderr is always given back."""
    with _QUIET_LOCK:
        if _QUIET['depth'] == 0:
            with contextlib.ExitStack() as undo:  # undone at once if silencing fails
                undo.enter_context(opencv_log_level('SILENT'))
                undo.callback(_restore_stderr, _silence_stderr())
                _QUIET['undo'] = undo.pop_all()
        _QUIET['depth'] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            if _QUIET['depth'] > 0:  # 0: a forked child's block, whose silence the fork ended
                _QUIET['depth'] -= 1
                if _QUIET['depth'] == 0:
                    _QUIET['undo'].close()


def _silence_stderr():
    """Point file descriptor 2 at /dev/null; returns a duplicate of what it was (None: no stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return None
    try:
        with open(os.devnull, 'wb') as devnull:
            os.dup2(devnull.fileno(), 2)
    except OSError:
        os.close(saved)
        raise
    return saved


def _restore_stderr(saved):
    if saved is not None:
        os.dup2(saved, 2)
        os.close(saved)


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
def decode(data, flags=cv2.IMREAD_UNCHANGED):
    """The image in ``data`` (bytes) decoded by OpenCV with ``flags``, quietly; None if it cannot be."""
    if not data:
        return None
    try:
        with quiet_native_stderr():
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    return None if img is None or img.size == 0 else img


class Header(NamedTuple):
    """What an image file's header says, read without decoding the pixels (:func:`read_header`)."""
    width: int
    height: int
    #: EXIF orientation, 1..8 (1: as stored; ``basicsr infer`` turns the pixels upright by it)
    orientation: int = 1
    #: frames in the file: more than one for an animation (APNG, animated WebP, GIF)
    frames: int = 1


def read_header(source, orientation=True):
    """The :class:`Header` of an image file (a path or its bytes), from its header alone; None
    when Pillow does not know the format (OpenCV may still decode it). This is the one reader of
    image headers; it reads the size of images of any size (callers set their own limits).
    ``orientation=False``: orientation 1 without looking for it (for callers that need the size
    only: a PNG's EXIF may follow its pixels, and finding it means walking every chunk header)."""
    try:
        with _open_any_size(source) as im:
            try:
                turned = _orientation(im, source) if orientation and im.format != 'TIFF' else 1
            except Exception:  # broken EXIF: the pixels as stored
                turned = 1
            # TIFF: Pillow's size and OpenCV's pixels are upright already; a tag that is not 1-8: as stored
            turned = turned if isinstance(turned, int) and 1 <= turned <= 8 else 1
            return Header(im.size[0], im.size[1], turned, getattr(im, 'n_frames', 1))
    except Exception:  # not a format Pillow knows, or an unreadable file
        return None


_PIL_GUARD = threading.Lock()


@contextlib.contextmanager
def _open_any_size(source):
    """Pillow's ``Image.open`` of ``source`` without its decompression-bomb guard, which refuses
    even to tell the size of an image past 179 Mpx (the guard is process-wide: lifted for the
    reopen alone, under a lock)."""
    import io
    import warnings

    from PIL import Image
    fp = (lambda: io.BytesIO(source)) if isinstance(source, bytes) else (lambda: source)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # DecompressionBombWarning, broken EXIF: callers say what matters
        try:
            im = Image.open(fp())
        except Image.DecompressionBombError:
            with _PIL_GUARD:
                limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(fp())
                finally:
                    Image.MAX_IMAGE_PIXELS = limit
    with im:
        yield im


def _orientation(im, source):
    """EXIF orientation of an opened image, without decoding its pixels."""
    from PIL import Image
    if im.format != 'PNG' or 'exif' in im.info or 'Raw profile type exif' in im.info:
        # Image.getexif: PngImageFile's own decodes every pixel first, to look for EXIF after them
        return Image.Image.getexif(im).get(0x0112, 1)
    exif = _png_exif_chunk(source)  # an eXIf chunk after the pixels: found by its header
    if exif is None:
        return 1
    found = Image.Exif()
    found.load(exif)
    return found.get(0x0112, 1)


def _png_exif_chunk(source):
    """The data of a PNG's eXIf chunk, or None, walking the chunk headers (8 bytes each, read with
    one pread a chunk: 0.06 ms for a 480 px DIV2K sub-image of 64 chunks)."""
    if isinstance(source, bytes):
        return _walk_png(lambda offset, size: source[offset:offset + size])
    fd = os.open(source, os.O_RDONLY)
    try:
        return _walk_png(lambda offset, size: os.pread(fd, size, offset))
    finally:
        os.close(fd)


def _walk_png(read_at):
    offset = 8  # after the signature
    while True:
        head = read_at(offset, 8)
        if len(head) < 8:
            return None
        length, kind = struct.unpack('>I4s', head)
        if kind == b'eXIf':
            return read_at(offset + 8, length)
        if kind == b'IEND':
            return None
        offset += 12 + length  # length, type, data, CRC


#: File signatures of image formats, to tell a broken image from a file that is no image.
_SIGNATURES = ((b'\x89PNG\r\n\x1a\n', 'PNG'), (b'\xff\xd8\xff', 'JPEG'), (b'BM', 'BMP'), (b'II*\x00', 'TIFF'),
               (b'MM\x00*', 'TIFF'), (b'GIF8', 'GIF')) + tuple((f'P{n}'.encode(), 'PNM') for n in range(1, 7))


def image_kind(head):
    """'PNG', 'JPEG', ... from the first bytes of a file, 'empty', or None."""
    if not head:
        return 'empty'
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'WebP'
    return next((kind for magic, kind in _SIGNATURES if head.startswith(magic)), None)


def looks_complete(data):
    """Whether ``data``, once OpenCV has decoded it, is the whole image: PNG with its IEND chunk,
    JPEG with its end-of-image marker (trailing bytes after it allowed), BMP and WebP as long as
    their headers say; TIFF and PNM always (OpenCV's readers of these refuse a file cut short
    themselves, tests/test_images.py). False for other formats: only a full decoder can tell."""
    kind = image_kind(data[:16])
    if kind in ('TIFF', 'PNM'):
        return True
    if kind == 'PNG':
        return b'IEND' in data[-64:]
    if kind == 'JPEG':
        return b'\xff\xd9' in data[-4096:]
    if kind == 'BMP':
        return len(data) >= 6 and len(data) >= int.from_bytes(data[2:6], 'little')
    if kind == 'WebP':
        return len(data) >= 8 + int.from_bytes(data[4:8], 'little')
    return False


class UnreadableImage(Exception):
    """An input file that is not an image, or a corrupt or truncated one; the message says which."""


def _diagnose(data):
    """Pillow's verdict on ``data``: None if it decodes it or does not know the format, else the reason."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
    except UnidentifiedImageError:
        return None, False  # not a format Pillow knows, or not an image: OpenCV decides
    except Image.DecompressionBombError:
        return None, True  # larger than Pillow's guard allows: OpenCV decides
    except (OSError, ValueError, SyntaxError) as e:
        kind = image_kind(data[:16])
        return f'corrupt or truncated {kind + " " if kind else ""}image ({e})', True
    return None, True


def decode_verified(data, flags=cv2.IMREAD_COLOR):
    """``data`` (bytes) decoded by OpenCV with ``flags`` (:func:`decode`), or UnreadableImage saying
    what is wrong.

    OpenCV returns a truncated JPEG as an image (4.x: grey where the data ends) and prints its
    complaints about broken files to stderr; so an image whose end is not where its format says
    (:func:`looks_complete`), or that OpenCV cannot decode, is judged by Pillow, which refuses
    truncated and corrupt files quietly and says why.
    """
    img = decode(data, flags)
    if img is not None and looks_complete(data):
        return img
    kind = image_kind(data[:16])
    if kind == 'empty':
        raise UnreadableImage('empty file')
    reason, known = _diagnose(data)
    if reason:
        raise UnreadableImage(reason)
    if img is not None:
        return img
    if known or kind:
        raise UnreadableImage(f'corrupt or truncated {kind + " " if kind else ""}image (cannot be decoded)')
    raise UnreadableImage('not an image (no decoder recognises it)')


def load_image(path):
    """Read an image as 3-channel 8-bit BGR, as BasicSR's datasets read it (OpenCV), read and
    decoded once; raises UnreadableImage saying what is wrong (:func:`decode_verified`)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except (PermissionError, FileNotFoundError, IsADirectoryError) as e:
        raise UnreadableImage(f'cannot read the file ({e.strerror})') from None
    return decode_verified(data, cv2.IMREAD_COLOR)


# ----------------------------------------------------------------------------------------
# MATLAB-compatible bicubic resizing (the LR images and the 'bicubic' rows of SR papers)
# ----------------------------------------------------------------------------------------
def modcrop(img, modulus):
    """Crop the bottom and right of ``img`` so that its height and width are multiples of ``modulus``."""
    h, w = img.shape[:2]
    return img[:h - h % modulus, :w - w % modulus]


def bicubic_resize(img, factor):
    """``basicsr.utils.matlab_functions.imresize`` of a uint8 image by ``factor``, rounded and clipped back
    to uint8 (MATLAB's bicubic, antialiased when downscaling)."""
    from basicsr.utils.matlab_functions import imresize
    out = imresize(img.astype(np.float32) / 255., factor)
    return np.clip(np.round(out * 255.), 0, 255).astype(np.uint8)


def bicubic_downscale(img, scale):
    """MATLAB-compatible bicubic downscaling of a uint8 image by ``1 / scale``, rounded to uint8.

    This is ``basicsr.utils.matlab_functions.imresize(img / 255, 1 / scale)`` (antialiased,
    as MATLAB's ``imresize``) scaled back to [0, 255], rounded and clipped.
    """
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'image size {w}x{h} is not a multiple of the scale {scale}')
    return bicubic_resize(img, 1 / scale)


def bicubic_upscale(img, scale):
    """MATLAB-compatible bicubic upscaling of a uint8 image (the 'bicubic' baseline of SR papers)."""
    return bicubic_resize(img, scale)

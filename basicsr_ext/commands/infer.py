"""``basicsr infer``: upscale image files with an ASID checkpoint.

::

    basicsr infer -i photos/ -o upscaled/ --model-path net_g_latest.pth [--tile 256] [--ext png]
    basicsr infer -i photos/ -o upscaled/ --onnx asid_x4.onnx     # a basicsr export file, ONNX Runtime

INPUT is an image file or a folder (not searched recursively; files that are not images
are skipped with a note). Outputs are named ``{stem}{suffix}.{ext}`` in OUTPUT, suffix
``_ASID_x{scale}`` and the input's format by default. With ``--compare``, each output also gets
``{stem}{suffix}_compare.png`` beside it: input (nearest neighbour) | MATLAB bicubic | network
output, side by side at the output size, labelled (:mod:`basicsr_ext.common.compare`). What is
read and written:

* 8-bit RGB / greyscale / palette images: upscaled as RGB; greyscale written back as
  greyscale (BT.601 luma of the output).
* Alpha (RGBA, grey + alpha): RGB by ASID, alpha by ASID or bicubic (``--alpha``), then
  re-attached. Formats without alpha (JPEG, BMP) are written as PNG instead, with a note.
  Grey + alpha is read by OpenCV as RGBA and written as RGBA.
* 16-bit PNG / TIFF (and 32-bit float TIFF): computed in float, written back at the same
  depth; 8-bit-only formats (``--ext jpg``) get 8 bits, with a note.
* EXIF orientation is applied (the pixels are turned upright; no EXIF is written).

An output never replaces an input (that image fails instead), and when OUTPUT is the input
folder, files named with the suffix or the default one of any scale (outputs of an earlier run)
are not taken as inputs.
Animated images (GIF, APNG, WebP) are refused rather than cut to their first frame.

Speed: on a GPU a folder of at least :data:`FRAMES_TO_COMPILE` images of one size (video
frames) has the network compiled for that size and upscaled :data:`GPU_FRAME_BATCH` frames
per network call (``--fast-path``, ``--batch``); outputs are encoded and written by
:data:`WRITER_THREADS` threads while the network works on the next images.

Each image that cannot be done (unreadable, truncated, not an image, output larger than
``--max-pixels``, out of memory, unwritable) is reported on one ``FAILED path: reason``
line and the others still run; the exit status is 1 if any failed. An unusable checkpoint
is one error before any image is read (exit status 2). The last line is the summary:
``done N, skipped M, failed K in T s (R images/s; R' after the first)``. Ctrl-C or SIGTERM
stops after one line and that summary, with exit status 128 + the signal's number (130, 143);
every output written is complete, and a rerun continues with the rest (and removes what a
run killed while writing left: :func:`basicsr_ext.common.files.remove_temporaries`).
"""
import collections
import contextlib
import os
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from basicsr_ext.commands.checkpoint_args import add_weight_overrides, value_range_of
from basicsr_ext.common.compare import input_bicubic_output
from basicsr_ext.common.errors import CommandError
from basicsr_ext.common.files import remove_temporaries, write_file
from basicsr_ext.common.images import (UnreadableImage, decode_verified, image_kind, is_image_name, opencv_log_level,
                                      read_header)
from basicsr_ext.common.interrupts import Interrupted

#: Output formats for ``--ext``.
OUTPUT_EXTENSIONS = ('png', 'jpg', 'jpeg', 'bmp', 'tif', 'tiff', 'webp', 'ppm', 'pgm')
#: Formats that store an alpha channel / 16-bit samples / 32-bit float samples.
ALPHA_EXTENSIONS = ('.png', '.tif', '.tiff', '.webp')
DEEP_EXTENSIONS = ('.png', '.tif', '.tiff', '.ppm', '.pgm')
FLOAT_EXTENSIONS = ('.tif', '.tiff')
#: ``--fast-path auto`` compiles on a GPU when at least this many inputs share one size (a
#: compilation costs about a minute once, and then each frame runs faster).
FRAMES_TO_COMPILE = 8
#: Frames per network call (``--batch``) on a GPU when the network is compiled: 320x180 -> 1280x720
#: on an H100 (torch 2.11, fp16, ``basicsr benchmark --batch 1 4``) took 3.97 ms a frame one at a
#: time and 2.65 in batches of 4 (ASID-D8: 9.97 and 6.49); batches of 8 gained only 6% more
#: (2.41 against 2.56 ms in another run), so 4 gets most of it at little memory.
GPU_FRAME_BATCH = 4
#: Threads that encode and write outputs while the network works on the next images (PNG
#: encoding a 1280x720 output takes longer than ASID's forward on a GPU), and how many outputs
#: may wait for them.
WRITER_THREADS = min(4, os.cpu_count() or 1)
MAX_WAITING_OUTPUTS = 2 * WRITER_THREADS
#: Default ``--max-pixels``: output pixels per image (16384 x 16384).
DEFAULT_MAX_PIXELS = 16384 * 16384
JPEG_QUALITY = 95


class ImageError(Exception):
    """One image that cannot be done; the message is the reason on its FAILED line."""


class Skipped(Exception):
    """One image left alone on purpose; the message is the reason on its 'skipped' line."""


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
def read_bytes(path):
    """The file's bytes; OS errors (permission, missing, a folder) become an ImageError."""
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as e:
        raise ImageError(f'cannot read: {e.strerror or e}') from None


def apply_orientation(img, orientation):
    """Turn an (H, W[, C]) array upright by its EXIF orientation (1..8), like PIL's exif_transpose."""
    def transpose(a):
        return a.swapaxes(0, 1)

    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: transpose,
        6: lambda a: transpose(a)[:, ::-1],  # 90 degrees clockwise
        7: lambda a: transpose(a[::-1, ::-1]),
        8: lambda a: transpose(a)[::-1],  # 90 degrees counter-clockwise
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(img)) if op else img


def decode(data):
    """Decode bytes with OpenCV (all depths, alpha kept) into RGB(A) / grey, EXIF-upright."""
    try:  # quiet: a failure is reported on one line naming the file, not by OpenCV's log
        img = decode_verified(data, cv2.IMREAD_UNCHANGED)
    except UnreadableImage as e:
        raise ImageError(str(e)) from None  # e.g. 'corrupt or truncated JPEG image (...)'
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageError(f'unsupported sample type {img.dtype}')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3:
        order = [2, 1, 0, 3][:img.shape[2]] if img.shape[2] in (3, 4) else None
        if order is None:
            raise ImageError(f'unsupported number of channels: {img.shape[2]}')
        img = img[..., order]
    if img.ndim == 3 and img.shape[2] == 4 and (img[..., 0] == img[..., 1]).all() and (
            img[..., 1] == img[..., 2]).all():
        img = img[..., [0, 3]]  # grey with alpha (OpenCV reads a PNG's grey + alpha as four channels): kept grey
    return img


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def encode(img, ext):
    """RGB(A)/grey array -> file bytes in format ``ext``; returns (bytes, notes)."""
    notes = []
    if img.ndim == 3 and img.shape[2] == 2:  # grey with alpha: OpenCV writes no two-channel image
        img = img[..., [0, 0, 0, 1]]
    if img.ndim == 3 and img.shape[2] == 4 and ext not in ALPHA_EXTENSIONS:
        raise AssertionError('alpha into a format without alpha')  # callers switch to PNG first
    if img.dtype == np.float32 and ext not in FLOAT_EXTENSIONS:
        img = np.clip(np.round(img * 65535), 0, 65535).astype(np.uint16)
    if img.dtype == np.uint16 and ext not in DEEP_EXTENSIONS:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append(f'{ext} holds 8 bits per sample: written with 8')
    if img.ndim == 2 and ext == '.ppm':  # a colour format: grey in three equal channels
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3:
        img = img[..., [2, 1, 0, 3][:img.shape[2]]]
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext in ('.jpg', '.jpeg') else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img), params)
    if not ok:
        raise ImageError(f'OpenCV cannot encode {img.dtype} {img.shape} as {ext}')
    return buf.tobytes(), notes


def write_atomically(path, data):
    """Write ``data`` to ``path`` whole or not at all (:func:`basicsr_ext.common.files.write_file`)."""
    try:
        write_file(path, data)
    except OSError as e:
        raise ImageError(f'cannot write {path}: {e.strerror or e}') from None


# ----------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------
def add_parser(commands):
    """Register ``infer`` on the ``basicsr`` command's subparsers."""
    p = commands.add_parser('infer', help='upscale image files with an ASID checkpoint',
                            description='Upscale an image file or a folder of images with ASID.')
    p.add_argument('-i', '--input', required=True, metavar='INPUT', help='image file or folder of images')
    p.add_argument('-o', '--output', required=True, metavar='OUTPUT', help='output folder (created if missing)')
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument('--model-path', metavar='CKPT',
                       help="checkpoint: BasicSR's (params / params_ema) or the authors' raw release")
    model.add_argument('--onnx', metavar='FILE',
                       help='an ONNX model written by basicsr export, run by ONNX Runtime on the CPU (needs the '
                       'export extra, not the checkpoint)')
    add_weight_overrides(p)
    p.add_argument('--suffix', default=None, help='appended to the input stem (default: _ASID_x{scale})')
    p.add_argument('--ext', default=None, type=lambda s: s.lower().lstrip('.'), choices=OUTPUT_EXTENSIONS,
                   help="output format (default: the input's)")
    p.add_argument('--overwrite', action='store_true', help='replace existing outputs (default: skip them)')
    p.add_argument('--tile', type=int, default=None, metavar='N',
                   help='LR tile size in pixels, larger than --tile-overlap; 0: whole image always (default: '
                   'whole image when it fits in memory, tiles otherwise)')
    p.add_argument('--tile-overlap', type=int, default=24, metavar='M', help='tile overlap in LR pixels (default 24)')
    p.add_argument('--max-memory', type=float, default=None, metavar='GIB',
                   help='memory the automatic whole-image/tile choice may plan with (default: half of the free '
                   'GPU memory or RAM)')
    p.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto (default: auto)')
    p.add_argument('--precision', choices=['auto', 'fp32', 'fp16', 'bf16'], default='auto',
                   help='default auto: fp32 on the CPU, the measured best on a GPU')
    p.add_argument('--fast-path', choices=['auto', 'none', 'compile'], default='auto',
                   help='compile: torch.compile the network (faster for many images of one size, e.g. video '
                   'frames; compiles once per size, a minute or more on a CPU); none: never; auto (default): '
                   f'compile on a GPU when at least {FRAMES_TO_COMPILE} inputs share one size')
    p.add_argument('--no-kernels', dest='kernels', action='store_false',
                   help="compile without ASID's fused Triton kernels (used on a GPU by default; the same function)")
    p.add_argument('--batch', type=int, default=None, metavar='N',
                   help='RGB frames of the most common size per network call (default: '
                   f'{GPU_FRAME_BATCH} on a GPU when the network is compiled, else 1)')
    p.add_argument('--alpha', choices=['asid', 'bicubic'], default='asid',
                   help='how the alpha channel is upscaled (default asid)')
    p.add_argument('--max-pixels', type=int, default=DEFAULT_MAX_PIXELS,
                   help=f'fail images whose output would have more pixels (default {DEFAULT_MAX_PIXELS})')
    p.add_argument('--compare', action='store_true',
                   help='also write OUTPUT/{stem}{suffix}_compare.png per image: input (nearest neighbour), bicubic '
                   'and the output side by side, labelled (for the images it upscales: with --overwrite for those '
                   'done before)')
    p.add_argument('-q', '--quiet', action='store_true',
                   help='no progress bars or per-image lines (skipped ones included): FAILED lines and the summary')
    p.set_defaults(func=cmd_infer)
    return p




def list_inputs(path):
    """(images, notes): the files to process and 'skipped' notes for what is not one."""
    if os.path.isfile(path):
        return [path], []
    images, notes = [], []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isdir(full):
            notes.append(f'skipped {full}: a folder (folders are not searched)')
        elif not is_image_name(name):
            notes.append(f'skipped {full}: not an image file ({os.path.splitext(name)[1] or "no extension"})')
        else:
            images.append(full)
    return images, notes


def output_suffix(args, scale):
    """What output names append to the input stem: ``--suffix``, else ``_ASID_x{scale}``."""
    return args.suffix if args.suffix is not None else f'_ASID_x{scale}'


def earlier_outputs(args, suffix, images):
    """Inputs that are outputs of an earlier run, when -o is the input folder: ``{path: the ending
    that says so}`` for the names that end with this run's suffix or with the default one of any
    scale (a run with ``--suffix _v2`` after one with the default leaves the first outputs alone)."""
    folder = args.input
    if not os.path.isdir(folder) or os.path.realpath(folder) != os.path.realpath(args.output):
        return {}
    earlier = {}
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        default = _DEFAULT_OUTPUT_NAME.search(stem)
        if suffix and stem.endswith((suffix, suffix + COMPARE_SUFFIX)):
            earlier[path] = suffix
        elif default:
            earlier[path] = default.group(0).removesuffix(COMPARE_SUFFIX)
    return earlier


class _Job(NamedTuple):
    """One image read and checked, waiting for the network."""
    path: str
    out: str
    ext: str
    img: np.ndarray
    notes: list
    compare: str = None  # where its input | bicubic | output image goes (--compare)


#: What ``--compare`` appends to an output's stem.
COMPARE_SUFFIX = '_compare'
#: The default suffix of any scale (``_ASID_x4``), optionally with ``_compare``, ending a name.
_DEFAULT_OUTPUT_NAME = re.compile(rf'_ASID_x\d+({COMPARE_SUFFIX})?$')


def _encode_and_write(job, result):
    """Encode ``result`` in ``job``'s format and write it atomically (a writer thread), and with
    ``--compare`` the comparison image; the notes."""
    data, more = encode(result, job.ext)
    write_atomically(job.out, data)
    if job.compare:
        write_atomically(job.compare, encode(input_bicubic_output(job.img, result), '.png')[0])
    return more


def _file_key(path):
    """``path`` as a file: resolved, and without case, so that ``UP.png`` is ``UP.PNG`` where the
    file system says so (macOS, Windows) and is taken for it everywhere."""
    return os.path.realpath(path).casefold()


class _Run:
    """One ``basicsr infer`` run: the upsampler, the options and the counters."""

    def __init__(self, args, upsampler, images, speed):
        self.args, self.up = args, upsampler
        self.suffix = output_suffix(args, upsampler.scale)
        self.done = self.skipped = self.failed = 0
        self.taken = {}  # output path -> input path, this run
        self.inputs = {_file_key(p) for p in images}  # never written over
        #: frames per network call and their (height, width) (:func:`plan_speed`); the frames waiting
        self.batch, self.frame_size, self.frames = speed.batch, speed.frame_size, []
        #: outputs being encoded and written, (job, future) in order
        self.writers, self.writing = ThreadPoolExecutor(WRITER_THREADS, 'basicsr-infer-write'), collections.deque()

    def say(self, msg):
        if not self.args.quiet:
            tqdm.write(msg, file=sys.stderr)

    def note_skipped(self, msg):
        self.skipped += 1  # counted in the summary; the line itself is a per-image line (-q: none)
        self.say(msg)

    def fail(self, path, reason):
        self.failed += 1
        tqdm.write(f'FAILED {path}: {reason}', file=sys.stderr)

    def output_path(self, path, ext):
        stem = os.path.splitext(os.path.basename(path))[0]
        return os.path.join(self.args.output, f'{stem}{self.suffix}{ext}')

    def claim(self, out):
        """Check that ``out`` may be written: Skipped if it exists, ImageError on a name clash."""
        if _file_key(out) in self.inputs:
            raise ImageError(f'output {out} would replace an input image: choose another -o or --suffix')
        if out in self.taken:
            raise ImageError(f'output {out} is already the output of {self.taken[out]} in this run')
        if os.path.exists(out) and not self.args.overwrite:
            raise Skipped(f'output {out} exists (use --overwrite to replace it)')
        return out

    def prepare(self, path):
        """Read and check one input: a :class:`_Job` (Skipped / ImageError / OSError if it cannot be done)."""
        args, up = self.args, self.up
        ext = '.' + args.ext if args.ext else os.path.splitext(path)[1].lower()
        if ext not in tuple('.' + e for e in OUTPUT_EXTENSIONS):
            ext = '.png'
        out = self.claim(self.output_path(path, ext))

        data = read_bytes(path)
        header = read_header(data)  # None: not a format Pillow knows; OpenCV may still decode it
        if header is not None:
            if header.frames > 1:  # OpenCV would read the first frame only
                if image_kind(data[:16]) == 'TIFF':
                    raise ImageError(f'multi-page TIFF ({header.frames} pages): only single images are upscaled; '
                                     f'split the pages first')
                raise ImageError(f'animated image ({header.frames} frames): only still images are upscaled; '
                                 f'extract the frames first')
            self.check_size(header.width, header.height)
        img = apply_orientation(decode(data), header.orientation if header is not None else 1)
        height, width = img.shape[:2]
        self.check_size(width, height)

        notes = []
        unfit = (f'{ext} has no alpha' if img.ndim == 3 and img.shape[2] in (2, 4) and ext not in ALPHA_EXTENSIONS
                 else '.pgm holds grey images only' if img.ndim == 3 and ext == '.pgm' else None)
        if unfit:
            notes.append(f'{unfit}: written as .png')
            ext = '.png'
            out = self.claim(self.output_path(path, ext))
        self.taken[out] = path
        compare = os.path.splitext(out)[0] + COMPARE_SUFFIX + '.png' if args.compare else None
        return _Job(path, out, ext, img, notes, compare)

    def process(self, job):
        """Upscale one prepared image on its own and write it."""
        up, (height, width) = self.up, job.img.shape[:2]
        s = up.scale
        self.say(f'{job.path}: {width}x{height} -> {width * s}x{height * s}, {up.describe_plan(height, width)}')
        tiles = up.num_tiles(height, width)
        bar = tqdm(total=tiles * up.network_passes(job.img), desc=os.path.basename(job.path), unit='tile',
                   leave=False, position=1, disable=True if self.args.quiet or tiles == 1 else None, file=sys.stderr)
        try:
            result = up.upscale(job.img, on_tile=bar.update)
        finally:
            bar.close()
        self.finish(job, result)

    def finish(self, job, result):
        """Hand one upscaled image to the writer threads (at most :data:`MAX_WAITING_OUTPUTS` wait)."""
        self.writing.append((job, self.writers.submit(_encode_and_write, job, result)))
        while len(self.writing) > MAX_WAITING_OUTPUTS:
            self.collect(block=1)

    def collect(self, block=0):
        """Count and report the outputs written (in order); wait for the first ``block`` of them."""
        while self.writing and (block > 0 or self.writing[0][1].done()):
            job, future = self.writing.popleft()
            block -= 1
            if future.cancelled():  # Ctrl-C: never started, nothing written
                continue
            more = _guarded(self, job.path, future.result)  # a failed write is that image's FAILED line
            if more is None:
                continue
            for note in job.notes + more:
                self.say(f'{job.path}: {note}')
            self.done += 1
            if self.done == 1:
                self.first_done = time.perf_counter()

    def close(self, interrupted=False):
        """Wait for the writes (after Ctrl-C: those already started; the others are dropped)."""
        self.writers.shutdown(wait=True, cancel_futures=interrupted)
        self.collect(block=len(self.writing))

    def batchable(self, job):
        """Whether ``job`` goes into a batch of frames: RGB of the frames' size."""
        img = job.img
        return self.batch > 1 and img.ndim == 3 and img.shape[2] == 3 and img.shape[:2] == self.frame_size

    def add_frame(self, job):
        if self.frames and job.img.dtype != self.frames[0].img.dtype:  # 8- and 16-bit frames: separate batches
            self.flush()
        self.frames.append(job)
        if len(self.frames) == self.batch:
            self.flush()

    def flush(self):
        """Upscale the frames waiting in one network call (a shorter last batch padded) and write them."""
        jobs, self.frames = self.frames, []
        if not jobs:
            return
        (height, width), s = jobs[0].img.shape[:2], self.up.scale
        for job in jobs:
            self.say(f'{job.path}: {width}x{height} -> {width * s}x{height * s}, whole image, '
                     f'{len(jobs)} frames in one call')
        try:
            results = self.up.upscale_frames([job.img for job in jobs], pad_to=self.batch)
        except Exception:  # e.g. one frame's output not finite: each on its own, so only that one fails
            for job in jobs:
                _guarded(self, job.path, self.process, job)
            return
        for job, result in zip(jobs, results):
            _guarded(self, job.path, self.finish, job, result)

    def check_size(self, width, height):
        pixels = width * height * self.up.scale**2
        if pixels > self.args.max_pixels:
            raise ImageError(f'output would be {width * self.up.scale}x{height * self.up.scale} = {pixels} pixels, '
                             f'more than --max-pixels {self.args.max_pixels}')


def most_common_size(images):
    """``((width, height), count)`` of the most common size among the readable ``images``, upright
    as they are upscaled (their headers with EXIF orientation,
    :func:`basicsr_ext.common.images.read_header`; portrait photos stored landscape count as
    portrait); ``(None, 0)`` when none is readable (the unreadable ones get their FAILED lines when
    they are processed)."""
    headers = (read_header(path) for path in images)
    sizes = collections.Counter((h.height, h.width) if h.orientation >= 5 else (h.width, h.height)  # 5-8: turned
                                for h in headers if h is not None)
    return sizes.most_common(1)[0] if sizes else (None, 0)


def frames_to_compile(images, device):
    """``((width, height), count)`` of the most common input size when ``--fast-path auto`` compiles
    for it (on a GPU, at least :data:`FRAMES_TO_COMPILE` inputs of that size), else None."""
    if device.type != 'cuda':
        return None
    size, count = most_common_size(images)
    return (size, count) if count >= FRAMES_TO_COMPILE else None


class Speed(NamedTuple):
    """How the network runs in one ``basicsr infer``, decided once by :func:`plan_speed`."""
    #: what the upsampler compiles (its ``compile``): False, True (every size) or the network input sizes
    compile: object = False
    #: frames of ``frame_size`` ((height, width)) per network call; 1: each image on its own
    batch: int = 1
    frame_size: tuple = None
    #: the lines that tell what was chosen
    notes: tuple = ()


def plan_speed(args, device, images, fits):
    """What the network is compiled for and how many frames go into one network call, from the
    arguments, the device and the inputs' headers; decided here only, once per run.

    * ``--fast-path compile``: compiled for every size; on a GPU the frames (RGB images of the
      most common size) go :data:`GPU_FRAME_BATCH` per call.
    * ``--fast-path auto`` on a GPU, when at least :data:`FRAMES_TO_COMPILE` inputs share one size
      (:func:`frames_to_compile`): compiled for the frames only, :data:`GPU_FRAME_BATCH` per call;
      other sizes, and single images of that size (alpha, grey), stay eager: no compilation each.
    * Otherwise (``none``, the CPU, ``--onnx``): eager, one image per call.

    ``--batch N`` sets the frames per call in every case (never more than there are frames); a
    batch that would not go through the network whole (``fits(height, width, batch)`` false: it
    would be cut into tiles) becomes one frame per call.
    """
    gpu = device.type == 'cuda'
    compile_all = args.onnx is None and args.fast_path == 'compile'
    frames = frames_to_compile(images, device) if args.fast_path == 'auto' and args.onnx is None else None
    if frames is None and (args.batch or 1) == 1 and not (compile_all and gpu):
        return Speed(compile_all)  # one image per network call
    size, count = frames or most_common_size(images)
    if size is None:  # no readable image
        return Speed(compile_all)
    width, height = size
    batch = min(args.batch or (GPU_FRAME_BATCH if gpu and (frames or compile_all) else 1), count)
    notes = []
    if batch > 1 and not fits(height, width, batch):
        notes.append(f'basicsr infer: {batch} frames of {width}x{height} do not fit in memory at once: one at a time')
        batch = 1
    compile = compile_all
    if frames:
        compile = [(batch, height, width)] if batch > 1 else [(height, width)]
        notes.append(f'basicsr infer: {count} inputs of {width}x{height}: the network is compiled for them'
                     + (f', {batch} per call' if batch > 1 else '') + ' (--fast-path none: never)')
    if batch == 1:
        return Speed(compile, notes=tuple(notes))
    return Speed(compile, batch, (height, width), tuple(notes))


@contextlib.contextmanager
def _warnings_printed():
    """Python warnings raised inside the block (e.g. fp16 on the CPU) printed after it, one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield
    for w in caught:
        print(f'basicsr infer: warning: {w.message}', file=sys.stderr)


def load_network(args):
    """(network, device): the checkpoint built as an ASID (``--scale``, ``--num-groups`` and
    ``--value-range`` checked or applied), or the ``--onnx`` model run by ONNX Runtime on the
    CPU, and the device it runs on. Any problem with them or their options is a CommandError."""
    from asid_arch.checkpoint import CheckpointError, build_asid
    from asid_arch.runtime import resolve_device

    if args.onnx is not None:
        from basicsr_ext.common.onnx_model import OnnxError, OnnxNetwork
        for option, value, default in (('--device', args.device, ('auto', 'cpu')),
                                       ('--precision', args.precision, ('auto', 'fp32')),
                                       ('--fast-path', args.fast_path, ('auto', 'none')),
                                       ('--batch', args.batch, (None, 1)),
                                       ('--value-range', args.value_range, (None, )),
                                       ('--num-groups', args.num_groups, (None, ))):
            if value not in default:
                raise CommandError(f'{option} {value} does not apply to --onnx (ONNX Runtime on the CPU, fp32 '
                                   f'input and output, the value range fixed at export)')
        try:
            return OnnxNetwork(args.onnx), resolve_device('cpu')
        except OnnxError as e:
            raise CommandError(str(e)) from None
    if str(args.model_path).lower().endswith('.onnx'):
        raise CommandError(f'--model-path {args.model_path}: an ONNX model; run it with --onnx {args.model_path}')
    try:
        device = resolve_device(args.device)
        with _warnings_printed():
            return build_asid(args.model_path, upscale=args.scale, num_groups=args.num_groups,
                              value_range=value_range_of(args)), device
    except (CheckpointError, ValueError, RuntimeError) as e:
        raise CommandError(str(e)) from None


def fits_whole(args, network, device):
    """``fits(height, width, batch)``: whether such a batch goes through ``network`` whole, not in
    tiles, as the upsampler that :func:`build_upsampler` makes will plan it."""
    from asid_arch.runtime import bytes_per_pixel, choose_tile

    max_memory, per_pixel = _max_memory(args), bytes_per_pixel(network)
    return lambda height, width, batch: choose_tile(height, width, batch, args.tile, args.tile_overlap, max_memory,
                                                    device, per_pixel) is None


def _max_memory(args):
    """``--max-memory`` in bytes, or None."""
    return None if args.max_memory is None else int(args.max_memory * 2**30)


def build_upsampler(args, network, device, compile):
    """The upsampler of ``network`` (:func:`load_network`) for ``args``, compiled as :func:`plan_speed`
    decided (``compile``); a problem with the options is a CommandError."""
    from asid_arch.inference import ASIDUpsampler

    precision = 'fp32' if args.onnx is not None else args.precision
    try:
        with _warnings_printed():
            return ASIDUpsampler(network, device=device, precision=precision, tile=args.tile,
                                 tile_overlap=args.tile_overlap, alpha=args.alpha, scale=args.scale,
                                 max_memory=_max_memory(args), compile=compile,
                                 kernels='auto' if args.kernels else False)
    except (ValueError, RuntimeError) as e:
        raise CommandError(str(e)) from None


def cmd_infer(args):

    start = time.perf_counter()
    if not os.path.exists(args.input):
        raise CommandError(f'input {args.input} does not exist')
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise CommandError(f'output {args.output} exists and is not a folder')
    if args.max_pixels < 1:
        raise CommandError(f'--max-pixels must be positive, got {args.max_pixels}')
    if args.tile is not None and args.tile < 0 or args.tile_overlap < 0:
        raise CommandError('--tile and --tile-overlap must not be negative')
    if args.batch is not None and args.batch < 1:
        raise CommandError(f'--batch must be positive, got {args.batch}')
    if args.max_memory is not None and not args.max_memory > 0:
        raise CommandError(f'--max-memory must be a positive number of GiB, got {args.max_memory:g}')

    network, device = load_network(args)  # before any image is read: a bad checkpoint stops here
    try:
        images, notes = list_inputs(args.input)
    except OSError as e:
        raise CommandError(f'cannot list {args.input}: {e.strerror or e}') from None
    suffix = output_suffix(args, network.upscale)
    earlier = earlier_outputs(args, suffix, images)
    images = [p for p in images if p not in earlier]  # earlier outputs may be replaced (--overwrite)
    speed = plan_speed(args, device, images, fits_whole(args, network, device))
    up = build_upsampler(args, network, device, speed.compile)
    if not args.quiet:
        print(f'basicsr infer: {args.model_path or args.onnx}: {up}', file=sys.stderr)
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise CommandError(f'cannot create output folder {args.output}: {e.strerror or e}') from None
    if not os.access(args.output, os.W_OK | os.X_OK):  # e.g. a read-only mount: say so once, not once an image
        raise CommandError(f'cannot write in output folder {args.output}')
    remove_temporaries(args.output)  # of an earlier run that was killed while writing

    run = _Run(args, up, images, speed)
    for note in notes:
        run.note_skipped(note)
    for path, ending in earlier.items():
        run.note_skipped(f'skipped {path}: an output of basicsr infer (its name ends with {ending})')
    if not images:
        run.say(f'no images in {args.input}')
    for note in speed.notes:
        run.say(note)
    status = None
    try:
        with warnings.catch_warnings(), opencv_log_level('ERROR'):  # no decode warnings: we report FAILED
            warnings.showwarning = _show_warning  # one line each (e.g. an fp16 overflow redone in fp32)
            for path in tqdm(images, desc='images', unit='img', disable=True if args.quiet else None,
                             file=sys.stderr):
                job = _guarded(run, path, run.prepare, path)
                if job is not None and run.batchable(job):
                    run.add_frame(job)
                elif job is not None:
                    _guarded(run, path, run.process, job)
                run.collect()
            run.flush()
            run.close()
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (common/interrupts.py): outputs are written atomically,
        # what is done is complete, a rerun resumes
        name = e.name if isinstance(e, Interrupted) else 'SIGINT'
        tqdm.write(f'basicsr infer: stopped by {name} (a rerun continues with the images not done)', file=sys.stderr)
        run.close(interrupted=True)
        status = e.status if isinstance(e, Interrupted) else 130
    elapsed = time.perf_counter() - start
    rate = ''
    if run.done:
        rate = f' ({run.done / elapsed:.2f} images/s'
        if run.done > 1:  # the first image also paid for loading (and compiling) the network
            rate += f'; {(run.done - 1) / (time.perf_counter() - run.first_done):.2f} after the first'
        rate += ')'
    print(f'done {run.done}, skipped {run.skipped}, failed {run.failed} in {elapsed:.1f} s{rate}')
    return status if status is not None else 1 if run.failed else 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    tqdm.write(f'basicsr infer: warning: {message}', file=sys.stderr)


def _guarded(run, path, fn, *args):
    """``fn(*args)`` for the image at ``path``; whatever goes wrong with it is counted and reported,
    never raised (None is returned then)."""
    from asid_arch.inference import NonFiniteOutput  # here, not at the top: `basicsr infer --help` needs no torch
    try:
        return fn(*args)
    except Skipped as e:
        run.note_skipped(f'skipped {path}: {e}')
    except ImageError as e:
        run.fail(path, str(e))
    except MemoryError:
        run.fail(path, 'out of memory (try --tile)')
    except NonFiniteOutput as e:  # never clamped into a black or white image
        run.fail(path, f'{e} with {run.args.model_path or run.args.onnx}')
    except Exception as e:  # one image's problem must not stop the others
        first = str(e).strip().splitlines()
        reason = f'{type(e).__name__}: {first[0] if first else ""}'
        if 'out of memory' in str(e).lower():
            reason += ' (try --tile)'
        run.fail(path, reason)
    return None

"""Checks of paired image data sets on disk, before BasicSR reads them.

BasicSR finds a missing LR partner, an LR of the wrong size or an unreadable file only when a
data loader reaches it, possibly hours into training, with an assertion or a cv2 error that
does not name the file. :func:`check_paired` looks at every file first and raises
:class:`DataError` with one line naming the path and what is wrong.

Every image is decoded once, as BasicSR's loader decodes it (:func:`decode_all`: in threads,
OpenCV's decoders release the GIL; a progress bar on big sets), so a file damaged in its
middle is found too. What decoded is remembered by (path, size, mtime) in a small cache file
per data folder under ``$XDG_CACHE_HOME/asid-basicsr/datacheck`` (``~/.cache/...``), so a
second start, a resume or another run on the same data decodes only what changed. The cache
is not beside the data (data folders are often read-only or shared between users) nor under
``experiments/`` (a refused start leaves no ``experiments/`` behind, and several working
folders share one data set); without a writable cache folder the check just decodes again.
"""
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from basicsr.utils import scandir

from basicsr_ext.common.images import UnreadableImage, decode, decode_verified, read_header


class DataError(ValueError):
    """A problem with a data set, in one line naming the path."""


#: How a complete PNG file ends: its IEND chunk.
_PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'


def _truncated_png(path, head):
    """True when a PNG file lacks its IEND chunk near the end (a copy or download cut short).

    (JPEG is not checked this way: files with data after the end marker, such as motion
    photos, are valid and common.)
    """
    if not head.startswith(b'\x89PNG'):
        return False
    with open(path, 'rb') as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        return _PNG_END not in f.read()


def image_size(path):
    """(width, height) of an image from its header, as stored (BasicSR's loader turns an
    EXIF-rotated image upright: the same area); raises DataError if it is not a readable image.

    Only the header and the last bytes are read, so a file that is not an image, an empty one,
    and a PNG cut short are found; pixel data damaged in the middle of a complete file is not
    (:func:`decode_all` finds that).
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(32)
        truncated = _truncated_png(path, head)
    except OSError as e:
        raise DataError(f'{path}: cannot read: {e.strerror or e}') from None
    if not head:
        raise DataError(f'{path}: empty file, not an image')
    if truncated:
        raise DataError(f'{path}: truncated PNG (the file ends before its IEND chunk)')
    header = read_header(path, orientation=False)
    if header is not None:
        return header.width, header.height
    try:  # not a format Pillow reads: OpenCV's full decoder
        with open(path, 'rb') as f:
            img = decode(f.read())  # quiet: OpenCV's own complaints about the file would add lines
    except OSError as e:
        raise DataError(f'{path}: cannot read: {e.strerror or e}') from None
    if img is None:
        raise DataError(f'{path}: not a readable image (unknown format or corrupt)')
    return img.shape[1], img.shape[0]


# ----------------------------------------------------------------------------------------
# decoding every image once, remembered by (path, size, mtime)
# ----------------------------------------------------------------------------------------
#: From how many images to decode a progress bar is shown (on a terminal).
PROGRESS_FROM = 200


def cache_dir():
    """Where :func:`decode_all` keeps what it decoded: one file per data folder."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'asid-basicsr', 'datacheck')


def _cache_file(folder):
    return os.path.join(cache_dir(), hashlib.sha1(os.fsencode(os.path.realpath(folder))).hexdigest()[:20] + '.pt')


def _read_cache(folder):
    """{name: (size, mtime_ns, width, height)} decoded earlier in ``folder``; empty if none or unreadable."""
    import torch
    try:
        cached = torch.load(_cache_file(folder), weights_only=True)
    except Exception:  # noqa: BLE001  (no cache, or a damaged one: decode again)
        return {}
    if not isinstance(cached, dict) or cached.get('folder') != os.path.realpath(folder):
        return {}
    return {name: tuple(entry) for name, entry in (cached.get('images') or {}).items()}


def _write_cache(folder, images):
    """Remember ``images`` ({name: (size, mtime_ns, width, height)}) of ``folder``; quietly nothing if
    the cache folder cannot be written (the next check decodes again).

    Written in place: a cache file cut short (a killed check, two checks writing at once) does
    not load, and an unreadable cache only means decoding again."""
    import torch
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        torch.save({'folder': os.path.realpath(folder), 'images': {k: list(v) for k, v in images.items()}},
                   _cache_file(folder))
    except (OSError, RuntimeError):
        pass


def _decoded_size(path):
    """(width, height) of the image at ``path`` decoded as BasicSR's ``imfrombytes`` does, or None
    (also for an image cut short that OpenCV 4.x would decode, grey where the data ends)."""
    try:
        with open(path, 'rb') as f:
            img = decode_verified(f.read(), cv2.IMREAD_COLOR)
    except (OSError, UnreadableImage):
        return None
    return img.shape[1], img.shape[0]


def _why_undecodable(path):
    """One line on an image that does not decode: from its header and end if they tell, else 'damaged'."""
    try:
        width, height = image_size(path)
    except DataError as e:
        return str(e)
    return f'{path}: damaged image: its header reads {width}x{height} but it cannot be decoded'


def _stat(path):
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f'{path}: cannot read: {e.strerror or e}') from None
    return st.st_size, st.st_mtime_ns


def decode_all(paths, where):
    """{path: (width, height)} of every image in ``paths``, each decoded once (or found decoded
    before with the same size and mtime in the cache); DataError naming the first that does not
    decode, and how many more do not.

    Args:
        paths (list[str]): image files.
        where (str): prefix of messages and of the progress bar, e.g. ``options/x.yml: datasets.train``.
    """
    stats = {path: _stat(path) for path in paths}
    folders = {}
    for path in paths:
        folders.setdefault(os.path.dirname(path), []).append(path)
    known = {folder: _read_cache(folder) for folder in folders}
    sizes, todo = {}, []
    for path in paths:
        entry = known[os.path.dirname(path)].get(os.path.basename(path))
        if entry is not None and tuple(entry[:2]) == stats[path]:
            sizes[path] = tuple(entry[2:])
        else:
            todo.append(path)
    decoded = _decode_in_threads(todo, where) if todo else {}
    sizes.update(decoded)
    bad = [path for path in paths if sizes.get(path) is None]
    for folder, members in folders.items():
        if any(path in decoded and sizes[path] is not None for path in members):
            images = {os.path.basename(p): (*stats[p], *sizes[p]) for p in members if sizes[p] is not None}
            _write_cache(folder, {**known[folder], **images})
    if bad:
        more = f' (and {len(bad) - 1} more images that do not decode)' if len(bad) > 1 else ''
        raise DataError(f'{where}: {_why_undecodable(bad[0])}{more}')
    return sizes


def _decode_in_threads(paths, where):
    """{path: (width, height) or None}, each file read and decoded in a pool of threads."""
    return dict(zip(paths, _map_in_threads(_decoded_size, [paths], len(paths), where)))


def _map_in_threads(fn, chunks, total, where):
    """``fn`` of every item of every chunk (lists, taken one at a time: an LMDB's values are read
    chunk by chunk, not all into memory), in order, by a pool of threads (OpenCV's decoders release
    the GIL); OpenCV's and libpng's own complaints silenced, a progress bar from PROGRESS_FROM items."""
    from tqdm import tqdm

    from basicsr_ext.common.images import quiet_native_stderr
    try:  # the bar writes to the terminal while stderr is silenced
        terminal = os.fdopen(os.dup(2), 'w')
    except OSError:
        terminal = None
    try:
        with quiet_native_stderr(), ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool, \
                tqdm(total=total, desc=f'{where}: decoding', unit='img', file=terminal, leave=False,
                     disable=True if terminal is None or total < PROGRESS_FROM else None) as bar:
            results = []
            for chunk in chunks:
                for result in pool.map(fn, chunk):
                    results.append(result)
                    bar.update()
            return results
    finally:
        if terminal is not None:
            terminal.close()


# ----------------------------------------------------------------------------------------
# LMDB
# ----------------------------------------------------------------------------------------
#: How many LMDB values are read into memory at a time to be decoded.
LMDB_CHUNK = 256


def _decoded_shape(value):
    """(h, w, c) of an image held in ``value`` (bytes), or None if it does not decode."""
    try:
        img = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED) if value else None
    except cv2.error:
        return None
    if img is None or img.size == 0:
        return None
    return (*img.shape[:2], 1 if img.ndim == 2 else img.shape[2])


def _open_lmdb(folder, where):
    """An LMDB opened read-only, its data.mdb known to hold every page the LMDB uses.

    A data.mdb cut short (an interrupted copy) is memory-mapped: reading a value past its end
    kills the reader with SIGBUS, no message. So its size is compared first with the pages its
    own meta page says are in use."""
    import lmdb
    data = os.path.join(folder, 'data.mdb')
    size = _stat(data)[0]
    try:
        env = lmdb.open(folder, readonly=True, lock=False, readahead=False, max_readers=1)
        used = (env.info()['last_pgno'] + 1) * env.stat()['psize']
    except lmdb.Error as e:
        raise DataError(f'{where}: {data}: not a readable LMDB ({str(e).strip()})') from None
    if size < used:
        env.close()
        raise DataError(f'{where}: {data} is truncated: {size} bytes, but the LMDB uses {used} (an interrupted '
                        f'copy? copy it again, or rebuild it with basicsr prepare)')
    return env


def check_lmdb(folder, shapes, where):
    """An LMDB as BasicSR's lmdb backend reads it: every key of its meta_info.txt present, and each
    value an image of the shape meta_info.txt gives, decoded once (remembered by the size and mtime
    of data.mdb and meta_info.txt, as :func:`decode_all` remembers files).

    Args:
        folder (str): the LMDB folder (data.mdb, meta_info.txt).
        shapes (dict): {key: (h, w, c)} from meta_info.txt (:func:`lmdb_shapes`).
        where (str): prefix of messages.
    """
    import lmdb
    data, meta = os.path.join(folder, 'data.mdb'), os.path.join(folder, 'meta_info.txt')
    stamp = (*_stat(data), *_stat(meta))
    known = _read_cache(folder)
    if known.get('data.mdb') == stamp:
        return
    keys = sorted(shapes)
    env = _open_lmdb(folder, where)
    missing, damaged = [], []

    def values():
        with env.begin(buffers=False) as txn:
            for i in range(0, len(keys), LMDB_CHUNK):
                chunk = []
                for key in keys[i:i + LMDB_CHUNK]:
                    try:
                        value = txn.get(key.encode('ascii'))
                    except lmdb.Error as e:
                        raise DataError(f'{where}: {data}: damaged LMDB at key {key} ({str(e).strip()})') from None
                    if value is None:
                        missing.append(key)
                    chunk.append(value)
                yield chunk

    try:
        decoded = _map_in_threads(_decoded_shape, values(), len(keys), where)
    finally:
        env.close()
    if missing:
        raise DataError(f'{where}: {_plural(len(missing), "key")} of {meta} {"is" if len(missing) == 1 else "are"} '
                        f'not in {data} (first: {missing[0]}); rebuild it with basicsr prepare')
    for key, shape in zip(keys, decoded):
        if shape is None:
            damaged.append(f'{key} does not decode as an image')
        elif shape[:2] != tuple(shapes[key][:2]):
            damaged.append(f'{key} is {shape[1]}x{shape[0]}, but {meta} says {shapes[key][1]}x{shapes[key][0]}')
    if damaged:
        more = f' (and {len(damaged) - 1} more damaged values)' if len(damaged) > 1 else ''
        raise DataError(f'{where}: {data}: {damaged[0]}{more}')
    _write_cache(folder, {**known, 'data.mdb': stamp})


def _plural(n, word):
    return f'{n} {word}' if n == 1 else f'{n} {word}s'


def _names(folder, where):
    names = sorted(scandir(folder))  # BasicSR's own listing: files only, hidden ones skipped
    if not names:
        raise DataError(f'{where}: no images in {folder}')
    return names


def lmdb_shapes(folder, where):
    """Names and (h, w, c) shapes from an LMDB's meta_info.txt, as BasicSR reads them."""
    meta = os.path.join(folder, 'meta_info.txt')
    if not os.path.isfile(meta):
        raise DataError(f'{where}: {meta} is missing (not an LMDB written by BasicSR\'s tools or basicsr prepare)')
    entries = {}
    with open(meta, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                shape = tuple(int(v) for v in parts[1].strip('()').split(','))
            except (IndexError, ValueError):
                raise DataError(f'{where}: {meta} line {number}: expected "name (h,w,c) level", '
                                f'found {line.strip()!r}') from None
            entries[parts[0].split('.')[0]] = shape
    if not entries:
        raise DataError(f'{where}: no images in {folder} (its meta_info.txt is empty)')
    return entries


def _check_sizes(pairs, scale, exact, gt_size, where):
    """pairs: (hr_path, (w, h), lr_path, (w, h)). Raise for the first LR that is not HR / scale."""
    for hr_path, (hw, hh), lr_path, (lw, lh) in pairs:
        ok = (lw * scale == hw and lh * scale == hh) if exact else (lw == hw // scale and lh == hh // scale)
        if not ok:
            raise DataError(f'{where}: LR {lr_path} is {lw}x{lh} but HR {hr_path} is {hw}x{hh}: expected '
                            f'{hw // scale}x{hh // scale} (HR / scale {scale})')
        if gt_size and (hw < gt_size or hh < gt_size):
            raise DataError(f'{where}: HR {hr_path} is {hw}x{hh}, smaller than gt_size {gt_size}')


def check_paired(dataset, scale, where, is_train_phase):
    """Check a PairedImageDataset's files: present, partnered, readable, LR = HR / scale.

    Args:
        dataset (dict): the dataset's options (dataroot_gt, dataroot_lq, io_backend, ...).
        scale (int | None): the option file's ``scale``; sizes are not compared without it.
        where (str): prefix of messages, e.g. ``options/x.yml: datasets.train``.
        is_train_phase (bool): training crops patches, so LR * scale must equal HR exactly and
            HR must hold a ``gt_size`` patch; validation crops HR to LR * scale, so there
            LR = floor(HR / scale) is enough.
    """
    gt_dir = os.path.expanduser(str(dataset['dataroot_gt']))
    lq_dir = os.path.expanduser(str(dataset['dataroot_lq']))
    backend = (dataset.get('io_backend') or {}).get('type', 'disk')
    scale = int(scale) if scale else None
    gt_size = dataset.get('gt_size') if is_train_phase else None

    if backend == 'lmdb':
        gt, lq = lmdb_shapes(gt_dir, where), lmdb_shapes(lq_dir, where)
        _report_unpartnered(sorted(set(gt) - set(lq)), 'HR', 'LR', lq_dir, where, suffix=' key')
        _report_unpartnered(sorted(set(lq) - set(gt)), 'LR', 'HR', gt_dir, where, suffix=' key')
        if scale:
            _check_sizes([(f'{gt_dir}:{k}', gt[k][1::-1], f'{lq_dir}:{k}', lq[k][1::-1]) for k in sorted(gt)],
                         scale, is_train_phase, gt_size, where)
        check_lmdb(gt_dir, gt, where)
        check_lmdb(lq_dir, lq, where)
        return len(gt)

    if backend != 'disk':
        return None
    tmpl = dataset.get('filename_tmpl') or '{}'
    meta_file = dataset.get('meta_info_file')
    if meta_file:
        with open(os.path.expanduser(str(meta_file)), encoding='utf-8') as f:
            gt_names = [line.strip().split(' ')[0] for line in f if line.strip()]
        if not gt_names:
            raise DataError(f'{where}: no images listed in {meta_file}')
        missing = [n for n in gt_names if not os.path.isfile(os.path.join(gt_dir, n))]
        if missing:
            verb = 'is' if len(missing) == 1 else 'are'
            raise DataError(f'{where}: {_plural(len(missing), "image")} listed in {meta_file} {verb} not in {gt_dir} '
                            f'(first: {missing[0]})')
        lq_names = None
    else:
        gt_names = _names(gt_dir, where)
        lq_names = _names(lq_dir, where)

    def partner(gt_name):
        base, ext = os.path.splitext(gt_name)
        return f'{tmpl.format(base)}{ext}'

    wanted = {partner(n): n for n in gt_names}
    if lq_names is None:
        lonely = [n for n in gt_names if not os.path.isfile(os.path.join(lq_dir, partner(n)))]
    else:
        present = set(lq_names)
        lonely = [n for n in gt_names if partner(n) not in present]
    _report_unpartnered(lonely, 'HR', 'LR', lq_dir, where,
                        hint='' if tmpl == '{}' else f' named by filename_tmpl {tmpl!r}')
    if lq_names is not None:
        _report_unpartnered([n for n in lq_names if n not in wanted], 'LR', 'HR', gt_dir, where)

    names = [(os.path.join(gt_dir, gt_name), os.path.join(lq_dir, lq_name)) for lq_name, gt_name in wanted.items()]
    sizes = decode_all([path for pair in names for path in pair], where)
    pairs = [(hr_path, sizes[hr_path], lr_path, sizes[lr_path]) for hr_path, lr_path in names]
    if scale:
        _check_sizes(pairs, scale, is_train_phase, gt_size, where)
    return len(pairs)


def _report_unpartnered(names, have, lack, folder, where, suffix='', hint=''):
    if names:
        count = f'1 {have} image{suffix} has' if len(names) == 1 else f'{len(names)} {have} image{suffix}s have'
        raise DataError(f'{where}: {count} no {lack} partner{hint} in {folder} (first: {names[0]})')


def check_single(dataset, where):
    """Check a SingleImageDataset's LR folder: not empty, every image readable."""
    backend = (dataset.get('io_backend') or {}).get('type', 'disk')
    lq_dir = os.path.expanduser(str(dataset['dataroot_lq']))
    if backend == 'lmdb':
        shapes = lmdb_shapes(lq_dir, where)
        check_lmdb(lq_dir, shapes, where)
        return len(shapes)
    if backend != 'disk' or dataset.get('meta_info_file'):
        return None
    names = _names(lq_dir, where)
    decode_all([os.path.join(lq_dir, name) for name in names], where)
    return len(names)


#: What to use when an InMemoryPairedImageDataset would not fit.
IN_MEMORY_ALTERNATIVES = ('use type: PairedImageDataset (decodes each sample from disk), an LMDB of the images '
                          '(basicsr prepare div2k --lmdb; PairedImageDataset with io_backend lmdb), or fewer images')


def paired_paths(dataset):
    """The pairs of a PairedImageDataset's options, listed by BasicSR's own functions in its order.

    Returns:
        list[dict]: ``{'gt_path': ..., 'lq_path': ...}`` (LMDB keys for the lmdb backend).
    """
    from basicsr.data.data_util import (paired_paths_from_folder, paired_paths_from_lmdb,
                                        paired_paths_from_meta_info_file)
    folders = [dataset['dataroot_lq'], dataset['dataroot_gt']]
    tmpl = dataset.get('filename_tmpl', '{}')
    if (dataset.get('io_backend') or {}).get('type', 'disk') == 'lmdb':
        return paired_paths_from_lmdb(folders, ['lq', 'gt'])
    if dataset.get('meta_info_file') is not None:
        return paired_paths_from_meta_info_file(folders, ['lq', 'gt'], dataset['meta_info_file'], tmpl)
    return paired_paths_from_folder(folders, ['lq', 'gt'], tmpl)


def decoded_sizes(dataset, paths, where):
    """Bytes each HR and LR image of ``paths`` takes decoded (3-channel uint8, as BasicSR's
    ``imfrombytes`` gives it), from the image headers or the LMDB's meta_info.txt.

    Returns:
        tuple[list[int], list[int]]: HR sizes and LR sizes, in the order of ``paths``.
    """
    if (dataset.get('io_backend') or {}).get('type', 'disk') == 'lmdb':
        gt, lq = lmdb_shapes(dataset['dataroot_gt'], where), lmdb_shapes(dataset['dataroot_lq'], where)
        return ([gt[p['gt_path']][0] * gt[p['gt_path']][1] * 3 for p in paths],
                [lq[p['lq_path']][0] * lq[p['lq_path']][1] * 3 for p in paths])
    gt, lq = [], []
    for p in paths:
        for key, sizes in (('gt_path', gt), ('lq_path', lq)):
            w, h = image_size(p[key])
            sizes.append(w * h * 3)
    return gt, lq


def check_gt_list(dataset, where):
    """RealESRGANDataset on disk: every image its ``meta_info`` lists (relative to ``dataroot_gt``)
    exists and is a readable image; an empty list is refused."""
    meta, root = str(dataset['meta_info']), str(dataset['dataroot_gt'])
    with open(meta, encoding='utf-8') as f:
        entries = [(number, line.strip().split(' ')[0]) for number, line in enumerate(f, 1) if line.strip()]
    if not entries:
        raise DataError(f'{where}.meta_info: {meta} lists no image (basicsr prepare realesrgan writes it)')
    for number, entry in entries:
        path = os.path.join(root, entry)
        if not os.path.isfile(path):
            raise DataError(f'{where}.meta_info: {meta} line {number}: {path} does not exist')
        image_size(path)

"""Checks of paired image data sets on disk, before BasicSR reads them.

BasicSR finds a missing LR partner, an LR of the wrong size or an unreadable file only when a
data loader reaches it, possibly hours into training, with an assertion or a cv2 error that
does not name the file. :func:`check_paired` looks at every file first, reading only image
headers (a few thousand files take a second or two), and raises :class:`DataError` with one
line naming the path and what is wrong.
"""
import os
import struct

from basicsr.utils import scandir


class DataError(ValueError):
    """A problem with a data set, in one line naming the path."""


def _png_size(head):
    # signature (8 bytes), IHDR length and type (8), width, height (4 + 4)
    if len(head) >= 24 and head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR':
        return struct.unpack('>II', head[16:24])
    return None


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
    """(width, height) of an image from its header; raises DataError if it is not a readable image.

    Only the header and the last bytes are read (a few thousand files take a second or two), so
    a file that is not an image, an empty one, and a PNG cut short are found; pixel data damaged
    in the middle of a complete file is not.
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
    size = _png_size(head)
    if size is not None:
        return size
    try:
        from PIL import Image
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001  (PIL raises many kinds; fall back to OpenCV's full decoder)
        pass
    from basicsr_ext.common.images import decode
    try:
        with open(path, 'rb') as f:
            img = decode(f.read())  # quiet: OpenCV's own complaints about the file would add lines
    except OSError as e:
        raise DataError(f'{path}: cannot read: {e.strerror or e}') from None
    if img is None:
        raise DataError(f'{path}: not a readable image (unknown format or corrupt)')
    return img.shape[1], img.shape[0]


def _size(path, where):
    try:
        return image_size(path)
    except DataError as e:
        raise DataError(f'{where}: {e}') from None


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

    pairs = []
    for lq_name, gt_name in wanted.items():
        hr_path, lr_path = os.path.join(gt_dir, gt_name), os.path.join(lq_dir, lq_name)
        pairs.append((hr_path, _size(hr_path, where), lr_path, _size(lr_path, where)))
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
        return len(lmdb_shapes(lq_dir, where))
    if backend != 'disk' or dataset.get('meta_info_file'):
        return None
    names = _names(lq_dir, where)
    for name in names:
        _size(os.path.join(lq_dir, name), where)
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
            w, h = _size(p[key], where)
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

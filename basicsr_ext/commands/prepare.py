"""``basicsr prepare``: training and benchmark data in the layouts BasicSR's option files expect.

``basicsr prepare div2k``
    HR sub-images (BasicSR's usual 480 px crops every 240 px, as its
    ``scripts/data_preparation/extract_subimages.py``) and their MATLAB-bicubic LR partners at
    each scale, a meta-info file, and, with ``--lmdb``, LMDB copies written by BasicSR's
    ``make_lmdb_from_imgs``. Works on DIV2K or any folder of HR images::

        datasets/DIV2K/DIV2K_train_HR_sub/0001_s001.png
        datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub/0001_s001.png
        datasets/DIV2K/meta_info_DIV2K_train_HR_sub.txt
        datasets/DIV2K/DIV2K_train_HR_sub.lmdb, DIV2K_train_LR_bicubic_X4_sub.lmdb   (--lmdb)

``basicsr prepare benchmark``
    A test set: each HR image cropped to a multiple of the scale (``GTmod4``) and its bicubic
    LR (``LRbicx4``), the layout of BasicSR's own option files::

        datasets/Set5/GTmod4/baby.png  datasets/Set5/LRbicx4/baby.png

``basicsr prepare demo``
    A small paired x4 train/validation set made from the photographs scikit-image ships
    (no download), for ``options/train_ASID_x4_demo.yml``.

LR images are BasicSR's MATLAB-compatible ``imresize(HR / 255, 1 / scale)``, rounded to uint8,
of the whole HR image (cropped to a multiple of the scales first), exactly as the official
DIV2K and benchmark LR images are made; sub-images of HR and LR are cut at matching places.

Every command is resumable and idempotent: each finished source image is recorded in a ledger
(``<output>/.prepare/<name>.jsonl``) with its size, modification time and the parameters used,
and outputs are written atomically. A second run redoes only what changed (nothing, usually).
One rule decides which earlier outputs stay (:meth:`Ledger.prune`): those this run makes, and
those made from a source image as it is now with the parameters it would get now (e.g. a scale
not asked for this time); the outputs of source images that disappeared or changed are removed,
at every scale. An unreadable image is reported on
one line and skipped; the others are processed, and the command exits non-zero at the end.
"""
import hashlib
import json
import math
import multiprocessing
import os
import sys

import cv2
import numpy as np
from tqdm import tqdm

from basicsr_ext.common.errors import CommandError
from basicsr_ext.common.files import is_out_of_space, remove_temporaries, replace_folder, write_file
from basicsr_ext.common.interrupts import Interrupted, ignore_in_worker
from basicsr_ext.common.images import (IMAGE_EXTENSIONS, UnreadableImage, bicubic_downscale, bicubic_resize,
                                       bicubic_upscale, load_image, modcrop)

#: PNG compression of written images (lossless; 3 is OpenCV's default and fast).
PNG_COMPRESSION = 3


class PrepareError(Exception):
    """Raised for problems that stop a preparation; reported as one line."""


# ----------------------------------------------------------------------------------------
# writing, listing
# ----------------------------------------------------------------------------------------
def write_image(path, img):
    """Write ``img`` as PNG atomically (:func:`basicsr_ext.common.files.write_file`): readers never see
    a half-written file, and the temporary is hidden (``.name.asid-tmp-PID``), so BasicSR never lists it."""
    ok, data = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise OSError(f'{path}: cannot encode image')
    write_file(path, data.tobytes())


def write_text(path, text):
    """Write ``text`` atomically, and only when it differs from what is there; True if written."""
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            if f.read() == text:
                return False
    write_file(path, text.encode('utf-8'))
    return True


def crop_starts(size, crop, step, thresh=0):
    """Top/left offsets of the sub-images along one side, as BasicSR's extract_subimages.py.

    Crops of ``crop`` px every ``step`` px, plus one ending at the border when more than
    ``thresh`` px would be left over. A side shorter than ``crop`` gives one crop of the whole side.
    """
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop + 1, step))
    if size - (starts[-1] + crop) > thresh:
        starts.append(size - crop)
    return starts


def list_images(folder):
    """Sorted names of the image files directly in ``folder`` (hidden files skipped, as BasicSR's scandir)."""
    if not os.path.isdir(folder):
        raise PrepareError(f'{folder}: input folder does not exist' if not os.path.exists(folder) else
                           f'{folder}: not a folder')
    names = sorted(name for name in os.listdir(folder)
                   if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(folder, name)))
    if not names:
        raise PrepareError(f'{folder}: no images found (looked for {", ".join(IMAGE_EXTENSIONS)})')
    stems = {}
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem in stems:
            raise PrepareError(f'{folder}: {stems[stem]} and {name} would both be written as {stem}.png')
        stems[stem] = name
    return names


# ----------------------------------------------------------------------------------------
# the ledger: which source images are done, with which parameters and outputs
# ----------------------------------------------------------------------------------------
class Ledger:
    """Records finished work units in ``<output>/.prepare/<name>.jsonl`` (one JSON object a line).

    A unit (one source image, or one source image at one scale) is up to date when its record
    has the same signature (source size and mtime, parameters) and all its outputs exist.
    Records are appended as units finish, so an interrupted run resumes where it stopped.
    Outputs are recorded relative to ``output``, so a run from another working directory (or
    with the output folder given another way) finds them.
    """

    def __init__(self, output, name):
        remove_temporaries(output, recursive=True)  # left by a preparation killed while writing
        self.root = output
        self.path = os.path.join(output, '.prepare', f'{name}.jsonl')
        self.records = {}
        if os.path.isfile(self.path):
            with open(self.path, encoding='utf-8') as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        self.records[record['unit']] = record
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by an interruption
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._file = None

    def outputs(self, unit):
        """The output paths recorded for ``unit`` (as paths usable from the working directory)."""
        record = self.records.get(unit) or {}
        return [os.path.join(self.root, p) for p in record.get('outputs', ())]

    def up_to_date(self, unit, signature):
        record = self.records.get(unit)
        return (record is not None and record.get('signature') == signature
                and all(os.path.isfile(p) for p in self.outputs(unit)))

    def add(self, unit, signature, outputs, info=None):
        """Record a finished unit; outputs of an earlier version of it that it no longer has are removed."""
        outputs = [os.path.relpath(p, self.root) for p in outputs]
        old = {os.path.relpath(p, self.root) for p in self.outputs(unit)}
        for path in old - set(outputs):
            if os.path.isfile(os.path.join(self.root, path)):
                os.remove(os.path.join(self.root, path))
        record = {'unit': unit, 'signature': signature, 'outputs': outputs, 'info': info or {}}
        self.records[unit] = record
        if self._file is None:
            ends_cleanly = True
            if os.path.isfile(self.path) and os.path.getsize(self.path):
                with open(self.path, 'rb') as f:
                    f.seek(-1, os.SEEK_END)
                    ends_cleanly = f.read(1) == b'\n'
            self._file = open(self.path, 'a', encoding='utf-8')
            if not ends_cleanly:  # a line cut short by an interruption: start a new one
                self._file.write('\n')
        self._file.write(json.dumps(record, sort_keys=True) + '\n')
        self._file.flush()

    def forget(self, unit):
        """Delete ``unit``'s outputs and its record (an out-of-date unit about to be redone: if it
        fails now, nothing of its earlier version is left to be taken for it)."""
        for path in self.outputs(unit):
            if os.path.isfile(path):
                os.remove(path)
        self.records.pop(unit, None)

    def prune(self, wanted, signature_now=lambda unit: None):
        """Delete the outputs of the recorded units that are outdated; returns those units.

        One rule for every sub-command: a recorded unit stays when this run wants it (it is
        redone if out of date), or when ``signature_now(unit)`` (the signature it would have
        if made now from its source file as it is; None when that file is gone) equals the one
        recorded, e.g. a scale not asked for this time. The outputs of removed source images,
        and of earlier versions of a source image or another geometry, go.
        """
        stale = [u for u, record in self.records.items()
                 if u not in wanted and signature_now(u) != record.get('signature')]
        for unit in stale:
            for path in self.outputs(unit):
                if os.path.isfile(path):
                    os.remove(path)
            del self.records[unit]
        return stale

    def close(self):
        """Rewrite the ledger compactly (one line per unit, sorted)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        text = ''.join(json.dumps(self.records[u], sort_keys=True) + '\n' for u in sorted(self.records))
        write_text(self.path, text)


def source_signature(path, params):
    st = os.stat(path)
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns, 'params': params}


def _scale_signature_now(unit, sources, params):
    """The signature unit ``'<stem>|X<scale>'`` would have if made now from ``sources[stem]`` with
    ``params``; None for a source that is gone (or a unit of another kind)."""
    stem, kind = unit.rsplit('|', 1)
    if stem not in sources or not (kind.startswith('X') and kind[1:].isdigit()):
        return None
    return source_signature(sources[stem], {**params, 'scale': int(kind[1:])})


def _prune_and_plan(ledger, units, input_dir, names, params, what, todo, up_to_date):
    """Delete the outputs of the ``ledger``'s outdated units (:meth:`Ledger.prune`: ``units`` are
    wanted this run; a unit ``'<stem>|X<scale>'`` of another scale stays while its source among
    ``names`` in ``input_dir``, made with ``params``, is as it was); returns the plan in one line
    (:func:`_run_recorded` logs it): ``{what} in {input_dir}: {todo} to process, {up_to_date} up
    to date[, outdated outputs of N images deleted]``."""
    sources = {os.path.splitext(n)[0]: os.path.join(input_dir, n) for n in names}
    removed = ledger.prune(units, lambda unit: _scale_signature_now(unit, sources, params))
    gone = len({u.rsplit('|', 1)[0] for u in removed})
    return (f'{what} in {input_dir}: {todo} to process, {up_to_date} up to date'
            + (f', outdated outputs of {gone} images deleted' if gone else ''))


# ----------------------------------------------------------------------------------------
# running work units, in worker processes when there are several
# ----------------------------------------------------------------------------------------
def _init_worker():
    # first: Ctrl-C is the main process's, and its pool's SIGTERM ends a worker cleanly, also one
    # still importing torch
    ignore_in_worker()
    import torch
    torch.set_num_threads(1)


def _run_units(function, jobs, workers, desc):
    """Yield ``function(job)`` for each job, with a progress bar; in a process pool if workers > 1."""
    if not jobs:
        return
    workers = max(1, min(workers, len(jobs)))
    # disable=None: a progress bar on a terminal only, not in logs and captured output
    with tqdm(total=len(jobs), desc=desc, unit='image', dynamic_ncols=True, disable=None) as pbar:
        if workers == 1:
            for job in jobs:
                yield function(job)
                pbar.update(1)
            return
        # forkserver: a plain fork copies the locks other threads (tqdm's monitor, torch's) hold at that
        # moment, and a pool worker could wait on one for ever (a test run hung so)
        method = 'forkserver' if 'forkserver' in multiprocessing.get_all_start_methods() else 'spawn'
        with multiprocessing.get_context(method).Pool(workers, initializer=_init_worker) as pool:
            for result in pool.imap_unordered(function, jobs):
                yield result
                pbar.update(1)
            # all done: let the workers leave on their own. The with-block's terminate() alone could wait
            # for ever on a worker blocked on the pool's queue lock, whose SIGTERM handler (ignore_in_worker)
            # Python runs only between bytecodes (a cold `prepare demo` hung so, about one run in seven)
            pool.close()
            pool.join()


def _run_recorded(function, jobs, workers, desc, ledger, record, plan, log):
    """Log ``plan`` (what is to be done), then run ``jobs`` (:func:`_run_units`): a failed one is
    reported on one line naming its file and collected, a finished one is passed to ``record``
    (which adds it to ``ledger``). The ledger is closed at the end, also when interrupted; an
    interruption from the moment the plan is logged says how many jobs were done. Returns the
    failures as [(path, why)]."""
    errors, done = [], 0
    try:
        log(plan)  # inside: a Ctrl-C right after this line is answered with the count too
        for result in _run_units(function, jobs, workers, desc):
            if 'error' in result:
                errors.append((result['src'], result['error']))
                tqdm.write(f'{result["src"]}: {result["error"]}', file=sys.stderr)
            else:
                record(result)
                done += 1
    except Interrupted as e:  # the summary so far, for the command's one line
        e.summary = f'{done} of {len(jobs)} images prepared and recorded; a rerun continues with the rest'
        raise
    finally:
        ledger.close()
    return errors


def _default_workers():
    return max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------------------
# DIV2K (and any folder of HR images): sub-images, LR, meta info, LMDB
# ----------------------------------------------------------------------------------------
#: Why an image whose name has a space is not cut into sub-images: BasicSR's meta info readers
#: (paired_paths_from_meta_info_file, RealESRGANDataset) take a line's name up to its first space
SPACED_NAME = "its name has a space, where BasicSR's meta info files end a name: rename it"


def _spaced(stem):
    return any(c.isspace() for c in stem)


def _source_image(src, stem=None):
    """``(image, None)``, or ``(None, error)`` for a file a job cannot use: unreadable, or, where its
    ``stem`` goes into a meta info file, a name with a space."""
    if stem is not None and _spaced(stem):
        return None, SPACED_NAME
    try:
        return load_image(src), None
    except (UnreadableImage, OSError) as e:
        return None, str(e)


def _div2k_unit(job):
    """Cut one HR image into sub-images and write its LR sub-images at each scale."""
    src, stem, out_hr, out_lr, scales, modulus, crop, step, thresh = job
    img, error = _source_image(src, stem)
    if error is not None:
        return {'src': src, 'error': error}
    img = modcrop(img, modulus)
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        return {'src': src, 'error': f'image is smaller than {modulus}x{modulus} px (a multiple of every scale)'}
    tops, lefts = crop_starts(h, crop, step, thresh), crop_starts(w, crop, step, thresh)
    boxes = [(top, left) for top in tops for left in lefts]
    names = [f'{stem}_s{i:03d}.png' for i in range(1, len(boxes) + 1)]
    ch, cw = min(crop, h), min(crop, w)
    result = {'src': src, 'names': names, 'shape': [ch, cw, img.shape[2]], 'outputs': {}}
    if out_hr is not None:
        paths = []
        for name, (top, left) in zip(names, boxes):
            paths.append(os.path.join(out_hr, name))
            write_image(paths[-1], img[top:top + ch, left:left + cw])
        result['outputs']['HR'] = paths
    for scale in scales:
        lr = bicubic_downscale(img, scale)
        paths = []
        for name, (top, left) in zip(names, boxes):
            paths.append(os.path.join(out_lr[scale], name))
            write_image(paths[-1], lr[top // scale:(top + ch) // scale, left // scale:(left + cw) // scale])
        result['outputs'][f'X{scale}'] = paths
    return result


def _lmdb_stamp(paths):
    """A digest of the images an LMDB is made of: their names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f'{os.path.basename(path)} {st.st_size} {st.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


STAMP_FILE = 'prepare_stamp.txt'


def make_lmdb(folder, names, lmdb_path):
    """Write ``folder``'s images ``names`` to ``lmdb_path`` with BasicSR's make_lmdb_from_imgs.

    Skipped when the LMDB there was made from exactly these files (same names, sizes, times).
    Written to a temporary folder first and renamed, so an interrupted run leaves no half LMDB.
    Returns True if written.
    """
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    stamp = _lmdb_stamp([os.path.join(folder, n) for n in names])
    stamp_path = os.path.join(lmdb_path, STAMP_FILE)
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if f.read().strip() == stamp:
                return False
    total = sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    map_size = total * 10 + (64 << 20)  # PNG level 1 in the LMDB is larger than the files; sparse anyway
    keys = [os.path.splitext(n)[0] for n in names]

    def make(tmp):
        make_lmdb_from_imgs(folder, tmp, list(names), keys, map_size=map_size)
        write_file(os.path.join(tmp, STAMP_FILE), (stamp + '\n').encode())

    replace_folder(lmdb_path, make, suffix='.lmdb')  # make_lmdb_from_imgs insists on the ending
    return True


def div2k_layout(output, name, scales):
    """Paths that ``prepare div2k`` writes (and the train option files read)."""
    return {
        'hr': os.path.join(output, f'{name}_HR_sub'),
        'lr': {s: os.path.join(output, f'{name}_LR_bicubic', f'X{s}_sub') for s in scales},
        'meta_info': os.path.join(output, f'meta_info_{name}_HR_sub.txt'),
        'hr_lmdb': os.path.join(output, f'{name}_HR_sub.lmdb'),
        'lr_lmdb': {s: os.path.join(output, f'{name}_LR_bicubic_X{s}_sub.lmdb') for s in scales},
    }


def _refuse_own_output(inputs, outputs):
    """PrepareError if an input folder is one the preparation writes into: each run would take the
    last run's sub-images as new HR images (``0001_s001_s001.png``, ...)."""
    inputs = {os.path.realpath(folder) for folder in inputs}
    for folder in outputs:
        if os.path.realpath(folder) in inputs:
            raise PrepareError(f'--input {folder} is where this preparation writes its sub-images: give the folder '
                               f'of the whole HR images (or another --output)')


def prepare_subimages(input_dir, output, name='DIV2K_train', scales=(2, 3, 4), crop_size=480, step=240,
                      thresh_size=0, lmdb=False, workers=None, log=print):
    """Sub-images, LR, meta info and (optionally) LMDB for a folder of HR images.

    Returns a dict: ``done`` (source images processed now), ``skipped`` (already up to date),
    ``errors`` (list of (path, message)), ``subimages`` (number of HR sub-images).
    """
    scales = sorted(set(int(s) for s in scales))
    if not scales or min(scales) < 1:
        raise PrepareError(f'scales must be positive integers, got {scales}')
    for s in scales:
        if crop_size % s or step % s:
            raise PrepareError(f'--crop-size {crop_size} and --step {step} must be multiples of the scale {s}')
    if step < 1 or crop_size < 1:
        raise PrepareError('--crop-size and --step must be positive')
    modulus = math.lcm(2, 3, 4, *scales)  # one HR crop for every scale, so one HR folder serves all
    names = list_images(input_dir)
    dotted = [n for n in names if '.' in os.path.splitext(n)[0]]
    if lmdb and dotted:  # BasicSR's paths_from_lmdb takes the key as the name up to its first '.'
        raise PrepareError(f'{os.path.join(input_dir, dotted[0])}: BasicSR\'s LMDB datasets cut names at the first '
                           f'".", so this name cannot be an LMDB key; rename the {len(dotted)} such file(s)')
    layout = div2k_layout(output, name, scales)
    _refuse_own_output([input_dir], [layout['hr'], *layout['lr'].values()])
    for folder in [layout['hr'], *layout['lr'].values()]:
        os.makedirs(folder, exist_ok=True)
    ledger = Ledger(output, name)
    geometry = {'modulus': modulus, 'crop': crop_size, 'step': step, 'thresh': thresh_size}

    jobs, units, skipped, wanted_all = [], set(), 0, {}
    for src_name in names:
        src = os.path.join(input_dir, src_name)
        stem = os.path.splitext(src_name)[0]
        wanted = {'HR': source_signature(src, geometry)}
        for s in scales:
            wanted[f'X{s}'] = source_signature(src, {**geometry, 'scale': s})
        wanted_all[stem] = wanted
        units.update(f'{stem}|{k}' for k in wanted)
        todo = [k for k, sig in wanted.items() if not ledger.up_to_date(f'{stem}|{k}', sig)]
        if not todo:
            skipped += 1
            continue
        todo_scales = [s for s in scales if f'X{s}' in todo]
        jobs.append((src, stem, layout['hr'] if 'HR' in todo else None, layout['lr'], todo_scales, modulus,
                     crop_size, step, thresh_size))
    # Units of scales not asked for this time stay while they still match the HR sub-images
    # (same source file, same geometry): they share the HR folder and the meta info file.
    plan = _prune_and_plan(ledger, units, input_dir, names, geometry, f'{name}: {len(names)} HR images', len(jobs),
                           skipped)

    def record(result):
        stem = os.path.splitext(os.path.basename(result['src']))[0]
        for key, outputs in result['outputs'].items():
            params = geometry if key == 'HR' else {**geometry, 'scale': int(key[1:])}
            ledger.add(f'{stem}|{key}', source_signature(result['src'], params), outputs,
                       {'names': result['names'], 'shape': result['shape']})

    errors = _run_recorded(_div2k_unit, jobs, workers or _default_workers(), f'{name} sub-images', ledger, record,
                           plan, log)

    # meta info: the HR sub-images of every source image that is complete and current at all scales
    # (not those of an image that changed and could not be read this time)
    complete, meta_lines = [], []
    for src_name in names:
        stem = os.path.splitext(src_name)[0]
        if not all(ledger.up_to_date(f'{stem}|{k}', sig) for k, sig in wanted_all[stem].items()):
            continue
        info = ledger.records[f'{stem}|HR']['info']
        h, w, c = info['shape']
        for sub in info['names']:
            complete.append(sub)
            meta_lines.append(f'{sub} ({h},{w},{c})\n')
    write_text(layout['meta_info'], ''.join(meta_lines))
    log(f'{name}: {len(complete)} HR sub-images in {layout["hr"]}; LR in '
        f'{", ".join(layout["lr"][s] for s in scales)}; meta info {layout["meta_info"]}')

    if lmdb:
        if not complete:
            raise PrepareError(f'{input_dir}: no image could be prepared, so no LMDB was written')
        for folder, lmdb_path in [(layout['hr'], layout['hr_lmdb'])] + [(layout['lr'][s], layout['lr_lmdb'][s])
                                                                         for s in scales]:
            if make_lmdb(folder, complete, lmdb_path):
                log(f'{name}: wrote {lmdb_path}')
            else:
                log(f'{name}: {lmdb_path} is up to date')
    return {'done': len(jobs) - len(errors), 'skipped': skipped, 'errors': errors, 'subimages': len(complete)}


# ----------------------------------------------------------------------------------------
# benchmark sets: HR cropped to a multiple of the scale, and its bicubic LR
# ----------------------------------------------------------------------------------------
def benchmark_layout(output, name, scale):
    """The folders ``prepare benchmark`` writes for ``scale`` (and the test option files read)."""
    return os.path.join(output, name, f'GTmod{scale}'), os.path.join(output, name, f'LRbicx{scale}')


def _pair_unit(job):
    """HR cropped to a multiple of each scale and its bicubic LR, for one image."""
    src, stem, targets = job  # targets: list of (scale, hr_path, lr_path)
    img, error = _source_image(src)
    if error is not None:
        return {'src': src, 'error': error}
    outputs = {}
    for scale, hr_path, lr_path in targets:
        hr = modcrop(img, scale)
        if min(hr.shape[:2]) < 2 * scale:  # MATLAB's bicubic kernel fails on a 1-px LR side
            return {'src': src, 'error': f'image is {img.shape[1]}x{img.shape[0]}: a side under twice the scale {scale} '
                                         f'leaves no LR image'}
        write_image(hr_path, hr)
        write_image(lr_path, bicubic_downscale(hr, scale))
        outputs[scale] = [hr_path, lr_path]
    return {'src': src, 'outputs': outputs}


def prepare_pairs(input_dir, names, folders, ledger_name, ledger_root, workers=1, desc='pairs', log=print):
    """Write HR/LR pairs for ``names`` (files in ``input_dir``); ``folders[scale] = (hr_dir, lr_dir)``."""
    for hr_dir, lr_dir in folders.values():
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
    ledger = Ledger(ledger_root, ledger_name)
    jobs, units, skipped = [], set(), 0
    for src_name in names:
        src = os.path.join(input_dir, src_name)
        stem = os.path.splitext(src_name)[0]
        targets = []
        for scale, (hr_dir, lr_dir) in folders.items():
            unit = f'{stem}|X{scale}'
            units.add(unit)
            if not ledger.up_to_date(unit, source_signature(src, {'scale': scale})):
                ledger.forget(unit)  # a benchmark set is read as a folder: an outdated pair would be tested
                targets.append((scale, os.path.join(hr_dir, f'{stem}.png'), os.path.join(lr_dir, f'{stem}.png')))
        if targets:
            jobs.append((src, stem, targets))
        else:
            skipped += 1
    # the same rule as prepare div2k: outputs at other scales stay while made from the image as it is
    plan = _prune_and_plan(ledger, units, input_dir, names, {}, f'{ledger_name}: {len(names)} images', len(jobs),
                           skipped)

    def record(result):
        stem = os.path.splitext(os.path.basename(result['src']))[0]
        for scale, outputs in result['outputs'].items():
            ledger.add(f'{stem}|X{scale}', source_signature(result['src'], {'scale': scale}), outputs)

    errors = _run_recorded(_pair_unit, jobs, workers, desc, ledger, record, plan, log)
    return {'done': len(jobs) - len(errors), 'skipped': skipped, 'errors': errors}


def prepare_benchmark(input_dir, name=None, scales=(2, 3, 4), output='datasets', workers=None, log=print):
    """``datasets/<name>/GTmod<s>`` and ``datasets/<name>/LRbicx<s>`` for each scale."""
    name = name or os.path.basename(os.path.normpath(input_dir))
    scales = sorted(set(int(s) for s in scales))
    if not scales or min(scales) < 1:
        raise PrepareError(f'scales must be positive integers, got {scales}')
    names = list_images(input_dir)
    folders = {s: benchmark_layout(output, name, s) for s in scales}
    result = prepare_pairs(input_dir, names, folders, name, os.path.join(output, name),
                           workers=workers or _default_workers(), desc=name, log=log)
    result['bicubic_psnr'] = {}
    for s in scales:
        psnr = result['bicubic_psnr'][s] = bicubic_psnr(*folders[s], s)
        log(f'{name} x{s}: HR in {folders[s][0]}, LR in {folders[s][1]}; bicubic x{s} PSNR (Y channel, '
            f'crop border {s}): ' + ('no pairs' if psnr is None else f'{psnr:.2f} dB'))
    return result


# ----------------------------------------------------------------------------------------
# the demo data set: photographs bundled with scikit-image
# ----------------------------------------------------------------------------------------
#: Photographs that scikit-image ships inside its package (no download needed), by its
#: ``skimage.data`` names. Training: colour photographs and a few grey ones (textures, text);
#: validation: three held-out colour photographs.
SKIMAGE_FILES = {
    'astronaut': 'astronaut.png', 'chelsea': 'chelsea.png', 'coffee': 'coffee.png',
    'immunohistochemistry': 'ihc.png',
    'motorcycle_left': 'motorcycle_left.png', 'motorcycle_right': 'motorcycle_right.png', 'rocket': 'rocket.jpg',
    'camera': 'camera.png', 'brick': 'brick.png',
    'grass': 'grass.png', 'gravel': 'gravel.png', 'moon': 'moon.png', 'coins': 'coins.png', 'page': 'page.png',
    'text': 'text.png', 'cell': 'cell.png',
}
#: (retina and hubble_deep_field are bundled too, but mostly flat: they slowed the demo's learning.)
DEMO_TRAIN = ('astronaut', 'immunohistochemistry', 'motorcycle_left', 'motorcycle_right', 'camera', 'brick',
              'grass', 'gravel', 'moon', 'coins', 'page', 'text', 'cell')
DEMO_VAL = ('chelsea', 'coffee', 'rocket')
DEMO_SCALE = 4
#: HR side of the training sub-images (LR 32 px), every DEMO_STEP px.
DEMO_CROP, DEMO_STEP = 128, 96
#: Validation images are the centre DEMO_VAL_SIZE x DEMO_VAL_SIZE px (HR) of their photograph,
#: which keeps validation on a CPU to a second or two.
DEMO_VAL_SIZE = 256


def skimage_data_dir():
    """The folder inside the installed scikit-image that holds its bundled images."""
    try:
        import skimage
    except ImportError:
        raise PrepareError('scikit-image is not installed: pip install scikit-image') from None
    return os.path.join(os.path.dirname(skimage.__file__), 'data')


def demo_layout(output):
    return {
        'train': (os.path.join(output, 'train', 'HR'), os.path.join(output, 'train', 'LR_bicubic', f'X{DEMO_SCALE}')),
        'val': (os.path.join(output, 'val', 'HR'), os.path.join(output, 'val', 'LR_bicubic', f'X{DEMO_SCALE}')),
    }


def bicubic_psnr(hr_dir, lr_dir, scale):
    """Mean Y-channel PSNR of MATLAB-bicubic upscaled LR against HR (crop border = scale), as BasicSR
    measures; None when there is no pair."""
    from basicsr.metrics import calculate_psnr
    values = []
    for name in sorted(os.listdir(hr_dir)):
        if name.startswith('.') or not name.endswith('.png'):
            continue
        hr = cv2.imread(os.path.join(hr_dir, name), cv2.IMREAD_COLOR)
        lr = cv2.imread(os.path.join(lr_dir, name), cv2.IMREAD_COLOR)
        sr = bicubic_upscale(lr, scale)
        values.append(calculate_psnr(sr, hr, crop_border=scale, test_y_channel=True))
    return float(np.mean(values)) if values else None


def _demo_unit(job):
    """One photograph: training sub-images (HR + LR) or a whole validation pair."""
    unit, src, stem, split, hr_dir, lr_dir = job
    img, error = _source_image(src)
    if error is not None:
        return {'unit': unit, 'src': src, 'error': error}
    # one bicubic LR of the whole photograph, then matching crops (as for DIV2K)
    if split == 'val':
        h, w = img.shape[:2]
        top, left = max(0, (h - DEMO_VAL_SIZE) // 2), max(0, (w - DEMO_VAL_SIZE) // 2)
        img = img[top:top + DEMO_VAL_SIZE, left:left + DEMO_VAL_SIZE]
    img = modcrop(img, DEMO_SCALE)
    lr = bicubic_downscale(img, DEMO_SCALE)
    h, w = img.shape[:2]
    if split == 'val':
        boxes, (ch, cw), names = [(0, 0)], (h, w), [f'{stem}.png']
    else:
        boxes = [(t, l) for t in crop_starts(h, DEMO_CROP, DEMO_STEP, DEMO_CROP // 2)
                 for l in crop_starts(w, DEMO_CROP, DEMO_STEP, DEMO_CROP // 2)]
        ch, cw = min(DEMO_CROP, h), min(DEMO_CROP, w)
        names = [f'{stem}_s{i:03d}.png' for i in range(1, len(boxes) + 1)]
    outputs = []
    for name, (top, left) in zip(names, boxes):
        hr_path, lr_path = os.path.join(hr_dir, name), os.path.join(lr_dir, name)
        write_image(hr_path, img[top:top + ch, left:left + cw])
        s = DEMO_SCALE
        write_image(lr_path, lr[top // s:(top + ch) // s, left // s:(left + cw) // s])
        outputs += [hr_path, lr_path]
    return {'unit': unit, 'src': src, 'outputs': outputs}


def prepare_demo(output=os.path.join('datasets', 'demo'), train=DEMO_TRAIN, val=DEMO_VAL, workers=None, log=print):
    """``datasets/demo/{train,val}/{HR,LR_bicubic/X4}`` from scikit-image's bundled photographs."""
    data_dir = skimage_data_dir()
    layout = demo_layout(output)
    for hr_dir, lr_dir in layout.values():
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
    ledger = Ledger(output, 'demo')
    geometry = {'scale': DEMO_SCALE, 'crop': DEMO_CROP, 'step': DEMO_STEP, 'val_size': DEMO_VAL_SIZE}
    jobs, units, signatures, skipped = [], set(), {}, 0
    for split, photos in (('train', train), ('val', val)):
        for photo in photos:
            src = os.path.join(data_dir, SKIMAGE_FILES[photo])
            if not os.path.isfile(src):
                raise PrepareError(f'{src}: this scikit-image does not bundle {photo!r}; the demo needs its '
                                   f'bundled photographs ({", ".join(SKIMAGE_FILES.values())})')
            unit = f'{photo}|{split}'
            units.add(unit)
            signatures[unit] = source_signature(src, {**geometry, 'split': split})
            if ledger.up_to_date(unit, signatures[unit]):
                skipped += 1
            else:
                jobs.append((unit, src, photo, split, *layout[split]))
    ledger.prune(units)  # every photograph of the demo is wanted: others' outputs go
    plan = (f'demo: {len(train)} training and {len(val)} validation photographs from {data_dir}: '
            f'{len(jobs)} to process, {skipped} up to date')
    errors = _run_recorded(_demo_unit, jobs, workers or _default_workers(), 'demo', ledger,
                           lambda result: ledger.add(result['unit'], signatures[result['unit']], result['outputs']),
                           plan, log)
    psnr = bicubic_psnr(*layout['val'], DEMO_SCALE)
    count = len(os.listdir(layout['train'][0]))
    log(f'demo: {count} training pairs (HR {DEMO_CROP}x{DEMO_CROP}) in {os.path.dirname(layout["train"][0])}, '
        f'{len(val)} validation pairs in {os.path.dirname(layout["val"][0])}')
    log(f'demo: bicubic x{DEMO_SCALE} PSNR on the validation set (Y channel, crop border {DEMO_SCALE}): '
        + ('no pairs' if psnr is None else f'{psnr:.2f} dB; compare with the PSNR the demo training logs'))
    return {'done': len(jobs) - len(errors), 'skipped': skipped, 'errors': errors, 'bicubic_psnr': psnr}


# ----------------------------------------------------------------------------------------
# Real-ESRGAN: multi-scale HR sub-images and the meta info RealESRGANDataset reads
# ----------------------------------------------------------------------------------------
#: Downscaling factors of Real-ESRGAN's multi-scale HR copies (``<stem>T1`` .. ``T3``; ``T0`` is the
#: image itself), and the shorter side of its last copy (``T4``), as its generate_multiscale_DF2K.py.
REALESRGAN_FACTORS = (0.75, 0.5, 1 / 3)
REALESRGAN_SHORT_SIDE = 400
#: Sub-images: 400 px (RealESRGANDataset crops or pads every image to 400 px) every 200 px.
REALESRGAN_CROP, REALESRGAN_STEP = 400, 200
REALESRGAN_OUTPUT = os.path.join('datasets', 'RealESRGAN')
REALESRGAN_DEMO_OUTPUT = os.path.join('datasets', 'demo', 'realesrgan')


def realesrgan_layout(output):
    """Paths that ``prepare realesrgan`` writes: ``dataroot_gt`` and ``meta_info`` of the option files
    (the meta info lists the sub-images relative to ``dataroot_gt``)."""
    return {'dataroot_gt': output, 'subimages': os.path.join(output, 'multiscale_sub'),
            'meta_info': os.path.join(output, 'meta_info_multiscale_sub.txt')}


def multiscale_copies(img, min_size):
    """``[(tag, image)]``: the HR image (T0), its downscaled copies (T1..T3) and one with the shorter
    side REALESRGAN_SHORT_SIDE px (T4), by MATLAB-bicubic ``imresize``. Copies whose shorter side
    would be below ``min_size`` px are left out (T4 also when the image is not larger than it)."""
    short = min(img.shape[:2])
    copies = [('T0', img)]
    factors = list(REALESRGAN_FACTORS)
    if short > REALESRGAN_SHORT_SIDE:
        factors.append(REALESRGAN_SHORT_SIDE / short)
    for i, factor in enumerate(factors, 1):
        if round(short * factor) >= min_size:
            copies.append((f'T{i}', bicubic_resize(img, factor)))
    return copies


def _realesrgan_unit(job):
    """The multi-scale sub-images of one HR image."""
    src, stem, out_dir, crop, step, thresh, min_size = job
    img, error = _source_image(src, stem)
    if error is not None:
        return {'src': src, 'error': error}
    outputs = []  # sub-images of ``crop`` px (a side shorter than that whole), as prepare div2k cuts them
    for tag, copy in multiscale_copies(img, min_size):
        h, w = copy.shape[:2]
        boxes = [(top, left) for top in crop_starts(h, crop, step, thresh)
                 for left in crop_starts(w, crop, step, thresh)]
        for i, (top, left) in enumerate(boxes, 1):
            outputs.append(os.path.join(out_dir, f'{stem}{tag}_s{i:03d}.png'))
            write_image(outputs[-1], copy[top:top + crop, left:left + crop])
    return {'src': src, 'stem': stem, 'outputs': outputs}


def prepare_realesrgan(sources, output=REALESRGAN_OUTPUT, crop_size=REALESRGAN_CROP, step=REALESRGAN_STEP,
                       thresh_size=0, min_size=256, workers=None, log=print, what='HR images'):
    """Multi-scale HR sub-images and their meta info for BasicSR's RealESRGANDataset.

    Args:
        sources (dict): {stem: path of an HR image}.
        output (str): ``dataroot_gt`` of the option files; the sub-images go to
            ``<output>/multiscale_sub/<stem>T<k>_s<nnn>.png``, their list to
            ``<output>/meta_info_multiscale_sub.txt``.
        crop_size, step, thresh_size (int): sub-images, as ``prepare div2k``.
        min_size (int): leave out downscaled copies whose shorter side is below this (px).

    Returns a dict: ``done``, ``skipped``, ``errors`` (as the other preparations), ``subimages``.
    """
    if crop_size < 1 or step < 1 or min_size < 1:
        raise PrepareError('--crop-size, --step and --min-size must be positive')
    layout = realesrgan_layout(output)
    _refuse_own_output({os.path.dirname(src) for src in sources.values()}, [layout['subimages']])
    os.makedirs(layout['subimages'], exist_ok=True)
    ledger = Ledger(output, 'realesrgan')
    params = {'factors': [round(f, 6) for f in REALESRGAN_FACTORS], 'short_side': REALESRGAN_SHORT_SIDE,
              'crop': crop_size, 'step': step, 'thresh': thresh_size, 'min_size': min_size}
    jobs, signatures, skipped = [], {}, 0
    for stem, src in sources.items():
        signatures[stem] = source_signature(src, params)
        if ledger.up_to_date(stem, signatures[stem]):
            skipped += 1
        else:
            jobs.append((src, stem, layout['subimages'], crop_size, step, thresh_size, min_size))
    removed = ledger.prune(set(sources))  # the sub-images of HR images no longer there go
    plan = (f'realesrgan: {len(sources)} {what}: {len(jobs)} to process, {skipped} up to date'
            + (f', sub-images of {len(removed)} removed images deleted' if removed else ''))
    errors = _run_recorded(_realesrgan_unit, jobs, workers or _default_workers(), 'realesrgan', ledger,
                           lambda result: ledger.add(result['stem'], signatures[result['stem']], result['outputs']),
                           plan, log)
    lines = []
    for stem in sorted(sources):
        if ledger.up_to_date(stem, signatures[stem]):
            lines += [os.path.relpath(p, output).replace(os.sep, '/') + '\n' for p in ledger.outputs(stem)]
    write_text(layout['meta_info'], ''.join(lines))
    log(f'realesrgan: {len(lines)} HR sub-images in {layout["subimages"]}; meta info {layout["meta_info"]} '
        f'(dataroot_gt: {output})')
    return {'done': len(jobs) - len(errors), 'skipped': skipped, 'errors': errors, 'subimages': len(lines)}


# ----------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------
def _finish(result, input_dir):
    """Exit status of a preparation: 0, or 1 and a one-line error when some images failed.

    Each failed image was already reported on its own line, naming it; this line counts them.
    """
    errors = result['errors']
    if errors:
        total = result['done'] + len(errors) + result['skipped']
        print(f'basicsr prepare: error: {input_dir}: {len(errors)} of {total} images could not be prepared (named '
              f'above); the other {total - len(errors)} were', file=sys.stderr)
        return 1  # as README says: 2 is for a preparation that could not start
    return 0


def _stopped_writing(e):
    """A write that failed (a full disk, a read-only folder): one line naming the file, for any command."""
    what = 'the disk is full' if is_out_of_space(e) else (e.strerror or str(e))
    return CommandError(f'cannot write {e.filename}: {what}; what was written before is complete and recorded, '
                        f'a rerun continues from there') if e.filename else CommandError(f'cannot write: {what}')


def _prepare(function, source, **kwargs):
    """Run a preparation of ``source``; problems that stop it become one line (CommandError)."""
    try:
        result = function(**kwargs)
    except PrepareError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise _stopped_writing(e) from None
    return _finish(result, source)


def cmd_div2k(args):
    return _prepare(prepare_subimages, args.input, input_dir=args.input, output=args.output, name=args.name,
                    scales=args.scales, crop_size=args.crop_size, step=args.step, thresh_size=args.thresh_size,
                    lmdb=args.lmdb, workers=args.workers)


def cmd_benchmark(args):
    return _prepare(prepare_benchmark, args.input, input_dir=args.input, name=args.name, scales=args.scales,
                    output=args.output, workers=args.workers)


def cmd_demo(args):
    return _prepare(prepare_demo, 'scikit-image data', output=args.output, workers=args.workers)


def cmd_realesrgan(args):
    try:
        if args.demo == (args.input is not None):
            raise PrepareError('give either --input DIR (a folder of HR images) or --demo')
        if args.demo:
            data_dir = skimage_data_dir()
            sources = {photo: os.path.join(data_dir, SKIMAGE_FILES[photo]) for photo in DEMO_TRAIN}
            missing = [p for p in sources.values() if not os.path.isfile(p)]
            if missing:
                raise PrepareError(f'{missing[0]}: this scikit-image does not bundle it; the demo needs its '
                                   f'photographs')
            what = f'photographs of the demo from {data_dir}'
        else:
            sources = {os.path.splitext(n)[0]: os.path.join(args.input, n) for n in list_images(args.input)}
            what = f'HR images in {args.input}'
        output = args.output or (REALESRGAN_DEMO_OUTPUT if args.demo else REALESRGAN_OUTPUT)
        min_size = args.min_size or (128 if args.demo else 256)
        result = prepare_realesrgan(sources, output, crop_size=args.crop_size, step=args.step,
                                    thresh_size=args.thresh_size, min_size=min_size, workers=args.workers, what=what)
    except PrepareError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise _stopped_writing(e) from None
    return _finish(result, args.input or 'scikit-image data')


def add_parser(commands):
    """Register ``basicsr prepare`` (with its sub-commands) on the ``commands`` subparsers."""
    prepare = commands.add_parser('prepare',
                                  help='prepare training and test data (DIV2K, benchmarks, demo, Real-ESRGAN)',
                                  description='Prepare data sets in the layouts the option files in options/ read. '
                                  'Every sub-command can be re-run: it only does what is not done yet.')
    sub = prepare.add_subparsers(dest='what', metavar='WHAT', required=True)

    div2k = sub.add_parser('div2k', help='HR sub-images, bicubic LR, meta info and LMDB from a folder of HR images',
                           description='Cut HR images (DIV2K_train_HR, or any folder) into sub-images and make '
                           'their MATLAB-bicubic LR at each scale, as BasicSR\'s extract_subimages.py.')
    div2k.add_argument('--input', required=True, metavar='DIR', help='folder of HR images, e.g. DIV2K_train_HR')
    div2k.add_argument('--output', default=os.path.join('datasets', 'DIV2K'), metavar='DIR',
                       help='output folder (default: datasets/DIV2K)')
    div2k.add_argument('--name', default='DIV2K_train',
                       help='prefix of the output folders: <name>_HR_sub, <name>_LR_bicubic/X4_sub (default: '
                       'DIV2K_train)')
    div2k.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], metavar='S', help='default: 2 3 4')
    div2k.add_argument('--crop-size', type=int, default=480, help='HR sub-image size (default: 480)')
    div2k.add_argument('--step', type=int, default=240, help='HR sub-image stride (default: 240)')
    div2k.add_argument('--thresh-size', type=int, default=0,
                       help='add a crop at the border when more than this is left over (default: 0)')
    div2k.add_argument('--lmdb', action='store_true', help='also write LMDB copies (BasicSR\'s make_lmdb_from_imgs)')
    div2k.add_argument('--workers', type=int, default=None, help='processes (default: CPU count, at most 8)')
    div2k.set_defaults(func=cmd_div2k)

    bench = sub.add_parser('benchmark', help='a test set: HR cropped to a multiple of the scale, and its bicubic LR',
                           description='Write <output>/<name>/GTmod<s> and <output>/<name>/LRbicx<s> for each scale.')
    bench.add_argument('--input', required=True, metavar='DIR', help='folder of HR images, e.g. Set5')
    bench.add_argument('--name', default=None, help='data set name (default: the input folder\'s name)')
    bench.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], metavar='S', help='default: 2 3 4')
    bench.add_argument('--output', default='datasets', metavar='DIR', help='default: datasets')
    bench.add_argument('--workers', type=int, default=None, help='processes (default: CPU count, at most 8)')
    bench.set_defaults(func=cmd_benchmark)

    demo = sub.add_parser('demo', help='a small x4 train/validation set from scikit-image\'s bundled photographs',
                          description='Write datasets/demo/{train,val}/{HR,LR_bicubic/X4} for '
                          'options/train_ASID_x4_demo.yml, and print the bicubic PSNR on the validation set.')
    demo.add_argument('--output', default=os.path.join('datasets', 'demo'), metavar='DIR',
                      help='default: datasets/demo')
    demo.add_argument('--workers', type=int, default=None, help='processes (default: CPU count, at most 8)')
    demo.set_defaults(func=cmd_demo)

    real = sub.add_parser('realesrgan', help='multi-scale HR sub-images and meta info for the Real-ESRGAN pipeline',
                          description='For BasicSR\'s RealESRGANDataset (options/train_ASID_x4_realesrnet.yml and '
                          '_realesrgan.yml): each HR image, its copies downscaled by 0.75, 0.5 and 1/3 and one with '
                          'the shorter side 400 px (MATLAB bicubic), cut into sub-images '
                          '<output>/multiscale_sub/<name>T<k>_s<nnn>.png, listed in '
                          '<output>/meta_info_multiscale_sub.txt. With --demo, from scikit-image\'s bundled '
                          'photographs into datasets/demo/realesrgan (for the _demo option files).')
    real.add_argument('--input', metavar='DIR', help='folder of HR images (DIV2K_train_HR, your photographs, ...)')
    real.add_argument('--demo', action='store_true', help='use the demo\'s photographs instead of --input')
    real.add_argument('--output', default=None, metavar='DIR',
                      help=f'dataroot_gt (default: {REALESRGAN_OUTPUT}; with --demo {REALESRGAN_DEMO_OUTPUT})')
    real.add_argument('--crop-size', type=int, default=REALESRGAN_CROP,
                      help=f'sub-image size (default: {REALESRGAN_CROP})')
    real.add_argument('--step', type=int, default=REALESRGAN_STEP,
                      help=f'sub-image stride (default: {REALESRGAN_STEP})')
    real.add_argument('--thresh-size', type=int, default=0,
                      help='add a crop at the border when more than this is left over (default: 0)')
    real.add_argument('--min-size', type=int, default=None, metavar='PX',
                      help='leave out downscaled copies with a shorter side below this (default: 256, the option '
                      'files\' gt_size; with --demo 128)')
    real.add_argument('--workers', type=int, default=None, help='processes (default: CPU count, at most 8)')
    real.set_defaults(func=cmd_realesrgan)
    return prepare

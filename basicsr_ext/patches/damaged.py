"""Damaged images met by BasicSR's ``PairedImageDataset`` while it runs.

The data check before a run decodes every image (:mod:`basicsr_ext.common.datacheck`), but a
file can still break later: overwritten while training runs, or read from a network share
that hiccups. BasicSR then fails deep in its loader with ``'NoneType' object has no attribute
'astype'`` and no file name. :func:`patch_skip_damaged_images` makes a training set name such
an image in one line, skip it (the loader takes the next index instead) and count it; beyond
``datasets.train.max_damaged`` (default :data:`DEFAULT_MAX_DAMAGED`) the run stops with a
:class:`DamagedDataError` naming the last one. A validation set does not skip (its metric
would silently average other images): its first damaged image stops the run, named.

The count is of distinct images, shared by all loader workers of one process (one flag per image
in shared memory made with the data set, which DataLoader workers inherit, forked or spawned) and
kept across epochs: an image met again, in a later epoch or in a batch BasicSR's prefetcher asked
for twice at the start, is counted and logged once. Under DDP each rank counts its own part. The
lines are logged by the process that meets the image: BasicSR's logger (console, and the run's
log file when the workers are forked, BasicSR's default without a launcher; spawned workers, as
under DDP, log to the console only).
"""
import multiprocessing.sharedctypes

from basicsr_ext.common.checkpoints import RunError

#: How many damaged training images a run skips before it stops, unless ``max_damaged`` says.
DEFAULT_MAX_DAMAGED = 10


class DamagedDataError(RunError):
    """More damaged images than ``max_damaged``, or one in a validation set; one line naming it."""


def damaged_path(dataset, index):
    """The first file of item ``index`` that does not decode as BasicSR decodes it, with why; or None."""
    import cv2
    import numpy as np
    for key in ('gt', 'lq'):
        path = dataset.paths[index][f'{key}_path']
        try:
            data = dataset.file_client.get(path, key)
        except Exception as e:  # noqa: BLE001  (disk, LMDB and other backends raise their own kinds)
            return path, f'cannot be read ({type(e).__name__}: {e})'
        if not data:
            return path, 'cannot be read (no data)'
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            img = None
        if img is None or img.size == 0:
            return path, 'cannot be decoded'
    return None


def patch_skip_damaged_images():
    """BasicSR's ``PairedImageDataset`` fails on a damaged image with ``'NoneType' object has no attribute 'astype'``."""
    from basicsr.data.paired_image_dataset import PairedImageDataset
    from basicsr.utils import get_root_logger
    if getattr(PairedImageDataset.__getitem__, '_skips_damaged', False):
        return False
    upstream_init, upstream_getitem = PairedImageDataset.__init__, PairedImageDataset.__getitem__

    def __init__(self, opt):
        upstream_init(self, opt)
        # one flag per image (setting one needs no lock, which could not cross from a forked to a
        # spawned context); shared memory that workers inherit, forked or spawned
        self.damaged = multiprocessing.sharedctypes.RawArray('b', len(self))

    def __getitem__(self, index):
        while True:
            try:
                return upstream_getitem(self, index)
            except Exception:
                found = None if self.file_client is None else damaged_path(self, index)
                if found is None:  # the files decode: not ours to handle
                    raise
            path, why = found
            name = self.opt.get('name', 'dataset')
            if self.opt.get('phase') != 'train':
                raise DamagedDataError(f'{name}: {path} {why}; validation images are not skipped')
            limit = self.opt.get('max_damaged', DEFAULT_MAX_DAMAGED)
            known, self.damaged[index] = self.damaged[index], 1
            count = sum(self.damaged)
            if count > limit:
                raise DamagedDataError(f'{name}: {path} {why}: {count} damaged images met, more than max_damaged '
                                       f'{limit}; the run stops (replace them, or raise datasets.train.max_damaged)')
            if not known:
                get_root_logger().warning(f'{name}: skipped damaged image {path} ({why}); {count} of at most '
                                          f'{limit} (max_damaged)')
            index = (index + 1) % len(self)

    __getitem__._skips_damaged = True
    PairedImageDataset.__init__ = __init__
    PairedImageDataset.__getitem__ = __getitem__
    return True

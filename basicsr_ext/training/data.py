"""``InMemoryPairedImageDataset``: BasicSR's ``PairedImageDataset`` with every pair decoded once.

``PairedImageDataset`` decodes a whole PNG (from disk or from an LMDB, which holds PNG bytes
too) for every sample, to cut one patch of it: on DIV2K's 480 px sub-images a loader worker
delivers a few hundred samples a second, and a fast training step waits for its data unless a
GPU has ~14 cores of workers. This type takes the same options (``dataroot_gt/lq``,
``meta_info_file``, ``filename_tmpl``, ``io_backend`` disk or lmdb, ``gt_size``,
``use_hflip/use_rot``, ``mean/std``, ``color``) and gives the same samples for the same random
state, but decodes every image once, in the process that builds it, into one uint8 buffer per
image set (HR, LR) in shared memory. Loader workers only crop, flip and rotate: forked workers
inherit the buffers, spawned ones (BasicSR's choice under DDP) receive a handle to them when
the data set is pickled, never the pixels.

Before decoding it logs what the images take, per process and for this host (under DDP each
rank decodes its own copy: ranks on this host x size), with the memory the system reports, and
refuses with one line (:class:`~basicsr_ext.common.resources.NoRoomError`) when that would not
fit; it logs its progress while decoding (in threads: OpenCV's decoder releases the GIL).
"""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, get_root_logger, imfrombytes, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data
from torchvision.transforms.functional import normalize

from basicsr_ext.common import resources
from basicsr_ext.common.datacheck import IN_MEMORY_ALTERNATIVES, DataError, decoded_sizes, paired_paths


#: Decoding progress is logged every tenth of the pairs, but not more often than every this many.
PROGRESS_EVERY = 500


class DecodedImages:
    """Images of one set, decoded into one shared uint8 buffer; ``images[i]`` is a read-only HWC view.

    Pickled (for a spawned loader worker) through ``multiprocessing``'s pickler, the buffer
    travels as a handle to its shared memory, not as pixels.
    """

    def __init__(self, sizes):
        self.offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        self.shapes = np.zeros((len(sizes), 3), dtype=np.int32)
        self.buffer = torch.empty(int(self.offsets[-1]), dtype=torch.uint8).share_memory_()
        self._array = None

    @property
    def nbytes(self):
        return int(self.offsets[-1])

    def _flat(self):
        if self._array is None:
            self._array = self.buffer.numpy()
        return self._array

    def put(self, index, img, path):
        """Store decoded ``img`` (HWC uint8) as image ``index``."""
        start, end = self.offsets[index], self.offsets[index + 1]
        if img.nbytes != end - start:  # the header said otherwise: a file changed since it was read
            raise DataError(f'{path}: decoded to {img.shape[1]}x{img.shape[0]}, but its header (or meta_info) '
                            f'gave {(end - start) // 3} pixels')
        self._flat()[start:end] = img.reshape(-1)
        self.shapes[index] = img.shape

    def __getitem__(self, index):
        view = self._flat()[self.offsets[index]:self.offsets[index + 1]].reshape(self.shapes[index])
        view.flags.writeable = False  # BasicSR's augment flips in place: crops are copied first
        return view

    def __len__(self):
        return len(self.shapes)

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_array'] = None
        return state


@DATASET_REGISTRY.register()
class InMemoryPairedImageDataset(data.Dataset):
    """Paired HR/LR images decoded once into shared memory; samples as ``PairedImageDataset``'s.

    Args:
        opt (dict): the options of ``PairedImageDataset``:
            dataroot_gt (str): HR folder (or LMDB).
            dataroot_lq (str): LR folder (or LMDB).
            meta_info_file (str): file listing the HR images (disk backend). Default: the folders' files.
            io_backend (dict): ``type: disk`` or ``type: lmdb``.
            filename_tmpl (str): LR name from the HR name, without extension. Default: '{}'.
            gt_size (int): HR patch size (training).
            use_hflip (bool): random horizontal flips (training).
            use_rot (bool): random rotations by 90 degrees (training).
            mean, std (list[float]): normalisation, as PairedImageDataset. Default: none.
            color (str): 'y' for the Y channel only. Default: BGR to RGB.
            decode_threads (int): threads decoding. Default: the usable cores.
            scale (int), phase (str): added by BasicSR.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.mean, self.std = opt.get('mean'), opt.get('std')
        backend = dict(opt['io_backend'])
        self.paths = paired_paths(opt)
        gt_sizes, lq_sizes = decoded_sizes(opt, self.paths, f'datasets {opt.get("name", "")}')
        ranks = self._check_room(sum(gt_sizes) + sum(lq_sizes), sum(gt_sizes), sum(lq_sizes))
        self.gt, self.lq = DecodedImages(gt_sizes), DecodedImages(lq_sizes)
        # the ranks of this host decode at the same time: each takes its share of the cores
        self._decode(backend, opt.get('decode_threads') or max(1, resources.usable_cores() // ranks))

    @property
    def nbytes(self):
        """Bytes of decoded images this data set holds (HR and LR)."""
        return self.gt.nbytes + self.lq.nbytes

    def _check_room(self, total, gt, lq):
        """Log the memory the images take, refuse when they would not fit; returns the ranks on this host."""
        import torch.distributed as dist
        name = self.opt.get('name', 'data set')
        distributed = dist.is_available() and dist.is_initialized()
        ranks = resources.ranks_on_host('pytorch' if distributed else 'none')
        per_host = f', {ranks} ranks on this host (each decodes its own copy): {resources.gb(total * ranks)}'
        get_root_logger().info(
            f'{type(self).__name__} {name}: {len(self.paths)} pairs take {resources.gb(total)} decoded per process '
            f'(HR {resources.gb(gt)} + LR {resources.gb(lq)}){per_host if ranks > 1 else ""}; '
            f'{resources.describe_room()}')
        # Every rank measures the memory free before any rank takes its share (else a later rank
        # would count an earlier one's images against the room for all of them).
        if distributed:
            dist.barrier()
        try:
            resources.check_fits(total, ranks, f'{type(self).__name__} {name} ({len(self.paths)} pairs)',
                                 IN_MEMORY_ALTERNATIVES)
        finally:
            if distributed:
                dist.barrier()
        return ranks

    def _decode(self, backend, threads):
        kind = backend.pop('type')
        if kind == 'lmdb':
            backend.update(db_paths=[self.opt['dataroot_lq'], self.opt['dataroot_gt']], client_keys=['lq', 'gt'])
        client = FileClient(kind, **backend)
        logger, name = get_root_logger(), self.opt.get('name', 'data set')
        jobs = [(i, key) for i in range(len(self.paths)) for key in ('gt', 'lq')]

        def decode(job):
            index, key = job
            path = self.paths[index][f'{key}_path']
            img = imfrombytes(client.get(path, key))  # BGR uint8, as PairedImageDataset reads it
            if img is None:
                raise DataError(f'{path}: not a readable image (unknown format or corrupt)')
            getattr(self, key).put(index, img, path)

        start, step = time.perf_counter(), max(PROGRESS_EVERY, -(-len(self.paths) // 10))
        with ThreadPoolExecutor(max(1, threads)) as pool:
            try:
                for done, _ in enumerate(pool.map(decode, jobs), 1):
                    pairs = done // 2
                    if done % 2 == 0 and (pairs % step == 0 or pairs == len(self.paths)):
                        logger.info(f'{name}: decoded {pairs}/{len(self.paths)} pairs '
                                    f'({time.perf_counter() - start:.1f} s)')
            except BaseException:  # a file that does not decode, Ctrl-C: stop now, not after the rest
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def __getitem__(self, index):
        scale = self.opt['scale']
        gt_path, lq_path = self.paths[index]['gt_path'], self.paths[index]['lq_path']
        img_gt, img_lq = self.gt[index], self.lq[index]
        if self.opt['phase'] == 'train':
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.opt['gt_size'], scale, gt_path)
            img_gt, img_lq = augment([img_gt.copy(), img_lq.copy()], self.opt['use_hflip'], self.opt['use_rot'])
        # [0, 1] float32 as imfrombytes(float32=True) makes it; cropping first converts only the patch
        img_gt, img_lq = (img.astype(np.float32) / 255. for img in (img_gt, img_lq))
        if self.opt.get('color') == 'y':
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]
        if self.opt['phase'] != 'train':  # as PairedImageDataset: HR cropped to LR x scale
            img_gt = img_gt[0:img_lq.shape[0] * scale, 0:img_lq.shape[1] * scale, :]
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': lq_path, 'gt_path': gt_path}

    def __len__(self):
        return len(self.paths)


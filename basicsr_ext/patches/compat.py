"""Patches that make PyPI BasicSR 1.4.2 run on today's stack.

Each patch is a small function whose docstring names the upstream breakage it works around.
It first checks whether the running stack needs it and returns ``False`` without touching
anything when it does not. :func:`apply` runs them all once, in order, the import fixes
before anything imports ``basicsr``, and records the names of those applied in
:data:`APPLIED`; :mod:`basicsr_ext.patches.hook` runs it in every process that imports BasicSR.
README.md has a section per patch for users who hit the same breakages.
"""
import collections
import functools
import re
import sys
import types

import torch

from basicsr_ext.common.optimizers import OPTIMIZERS
from basicsr_ext.patches import damaged, pipeline, runs, safety

APPLIED = []


def patch_functional_tensor():
    """torchvision 0.17 removed ``transforms.functional_tensor``, which ``basicsr.data.degradations`` imports."""
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
        return False
    except ImportError:
        pass
    from torchvision.transforms import functional

    shim = types.ModuleType('torchvision.transforms.functional_tensor')
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[shim.__name__] = shim
    return True


@functools.total_ordering
class LooseVersion:
    """The part of ``distutils.version.LooseVersion`` BasicSR uses: ordering of dotted versions."""

    def __init__(self, version):
        self.version = tuple(int(part) for part in re.findall(r'\d+', str(version)))

    def __eq__(self, other):
        return self.version == LooseVersion(other).version

    def __lt__(self, other):
        return self.version < LooseVersion(other).version


def patch_distutils():
    """Python 3.12 removed ``distutils``; ``basicsr.archs.arch_util`` imports ``distutils.version.LooseVersion``."""
    try:
        import distutils.version  # noqa: F401
        return False
    except ImportError:
        pass
    distutils = types.ModuleType('distutils')
    distutils.version = types.ModuleType('distutils.version')
    distutils.version.LooseVersion = LooseVersion
    sys.modules.update({'distutils': distutils, 'distutils.version': distutils.version})
    return True


#: The only non-tensor, non-builtin type that BasicSR's own training states contain
#: (``MultiStepRestartLR.milestones``). Everything else in them the safe loader already accepts.
BASICSR_STATE_TYPES = (collections.Counter, )


def patch_safe_loader():
    """torch >= 2.6 loads with ``weights_only=True``; allow BasicSR's state types there, nothing else."""
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return False  # torch < 2.4: no safe loader by default, nothing refused
    from torch import _weights_only_unpickler
    allowed = _weights_only_unpickler._get_allowed_globals()
    missing = [t for t in BASICSR_STATE_TYPES if f'{t.__module__}.{t.__qualname__}' not in allowed]
    if not missing:
        return False
    torch.serialization.add_safe_globals(missing)
    return True


def patch_cpu_distributed():
    """BasicSR's DDP setup hard-codes NCCL and ``torch.cuda``; without a GPU use gloo and a CPU DDP."""
    if torch.cuda.is_available():
        return False
    import torch.distributed as dist
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import dist_util

    def _init_dist_pytorch(backend, **kwargs):
        dist.init_process_group(backend='gloo', **kwargs)

    upstream_model_to_device = BaseModel.model_to_device

    def model_to_device(self, net):
        if not self.opt['dist']:
            return upstream_model_to_device(self, net)
        net = net.to(self.device)
        find_unused = self.opt.get('find_unused_parameters', False)
        return torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=find_unused)

    dist_util._init_dist_pytorch = _init_dist_pytorch
    BaseModel.model_to_device = model_to_device
    return True


def patch_ddp_spawns_workers():
    """BasicSR's ``init_dist`` makes DDP's loader workers spawned, but only when no start method is
    fixed yet, and anything that made a multiprocessing lock first fixes ``fork`` (a tqdm progress
    bar does, e.g. the data check's): whether workers were spawned depended on what ran before.
    Spawn is set whenever ``init_dist`` runs, as BasicSR means it."""
    import multiprocessing

    from basicsr.utils import dist_util
    upstream = dist_util.init_dist
    if getattr(upstream, 'sets_spawn', False):
        return False

    @functools.wraps(upstream)
    def init_dist(launcher, backend='nccl', **kwargs):
        if multiprocessing.get_start_method(allow_none=True) != 'spawn':
            multiprocessing.set_start_method('spawn', force=True)
        return upstream(launcher, backend, **kwargs)

    init_dist.sets_spawn = True
    for name in ('basicsr.utils.dist_util', 'basicsr.utils.options', 'basicsr.utils'):  # those that imported it
        module = sys.modules.get(name)
        if getattr(module, 'init_dist', None) is upstream:
            module.init_dist = init_dist
    return True


def patch_realesrgan_cpu():
    """BasicSR's ``RealESRNetModel`` / ``RealESRGANModel`` put their JPEG simulator, USM sharpener and
    training pair pool on the GPU with ``.cuda()``, which fails on a machine without CUDA."""
    if torch.cuda.is_available():
        return False
    from basicsr.models import realesrgan_model, realesrnet_model
    from basicsr.utils import DiffJPEG, USMSharp

    class CPUDiffJPEG(DiffJPEG):
        def cuda(self, device=None):
            return self  # no GPU: the model's device is the CPU

    class CPUUSMSharp(USMSharp):
        def cuda(self, device=None):
            return self

    def pool_on_the_data_device(upstream):
        @functools.wraps(upstream)
        def _dequeue_and_enqueue(self):
            if not hasattr(self, 'queue_lr'):  # the pool, made where the batch is instead of on CUDA
                b = self.lq.size(0)
                assert self.queue_size % b == 0, f'queue size {self.queue_size} should be divisible by batch size {b}'
                self.queue_lr = self.lq.new_zeros((self.queue_size, *self.lq.shape[1:]))
                self.queue_gt = self.gt.new_zeros((self.queue_size, *self.gt.shape[1:]))
                self.queue_ptr = 0
            return upstream(self)
        return _dequeue_and_enqueue

    for module, model in ((realesrnet_model, realesrnet_model.RealESRNetModel),
                          (realesrgan_model, realesrgan_model.RealESRGANModel)):
        module.DiffJPEG, module.USMSharp = CPUDiffJPEG, CPUUSMSharp
        model._dequeue_and_enqueue = pool_on_the_data_device(model._dequeue_and_enqueue)
    return True


def patch_filter2d_layout():
    """BasicSR's ``filter2D`` ``.view()``s its padded input; DiffJPEG's output is channels-last, which
    ``F.pad`` keeps on today's torch, so Real-ESRGAN's second blur fails: 'view size is not compatible'."""
    from basicsr.models import realesrgan_model, realesrnet_model
    from basicsr.utils import img_process_util
    upstream = img_process_util.filter2D
    if hasattr(upstream, '__wrapped__'):
        return False
    probe = torch.zeros(2, 3, 8, 8).to(memory_format=torch.channels_last)
    try:
        upstream(probe, torch.zeros(2, 3, 3))
        return False
    except RuntimeError:
        pass

    @functools.wraps(upstream)
    def filter2D(img, kernel):  # noqa: N802  (BasicSR's name)
        return upstream(img.contiguous(), kernel)

    for module in (img_process_util, realesrnet_model, realesrgan_model):
        module.filter2D = filter2D
    return True


def patch_optimizers():
    """PyPI 1.4.2 accepts only ``optim_g: {type: Adam}``; BasicSR master (and ASID's recipe) also use AdamW etc."""
    from basicsr.models.base_model import BaseModel
    try:
        BaseModel.get_optimizer(None, 'AdamW', [torch.zeros(1, requires_grad=True)], 1e-3)
        return False
    except NotImplementedError:
        pass

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        if optim_type not in OPTIMIZERS:
            raise NotImplementedError(f'optimizer {optim_type} is not supported; use one of {sorted(OPTIMIZERS)}.')
        return OPTIMIZERS[optim_type](params, lr, **kwargs)

    BaseModel.get_optimizer = get_optimizer
    return True


def patch_eta_off_by_one():
    """BasicSR's ``MessageLogger`` counts one iteration too many left: the last line reads ``eta: -1 day, 23:59:58``."""
    import inspect

    from basicsr.utils.logger import MessageLogger
    if (hasattr(MessageLogger.__init__, '__wrapped__')
            or 'self.max_iters - current_iter - 1' not in inspect.getsource(MessageLogger.__call__)):
        return False
    init = MessageLogger.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.max_iters += 1  # used for the eta only: (max_iters + 1) - current - 1 iterations are left

    MessageLogger.__init__ = __init__
    return True


def patch_validate_bare_network():
    """BasicSR's ``SRModel.test`` runs the DDP wrapper on rank 0 alone; its buffer broadcast then waits for the others."""
    import inspect

    from basicsr.models.sr_model import SRModel
    if 'self.net_g(self.lq)' not in inspect.getsource(SRModel.test):
        return False

    def test(self):
        # The bare network computes what the wrapper's forward does, without the collectives that
        # DistributedDataParallel runs first (broadcasting buffers such as ASID's relative position
        # index), which pair with the other ranks' next training step mid-run and fail or hang at the end.
        ema = hasattr(self, 'net_g_ema')
        net = self.get_bare_model(self.net_g_ema if ema else self.net_g)
        net.eval()
        with torch.no_grad():
            self.output = net(self.lq)
        if not ema:
            net.train()

    SRModel.test = test
    return True


def patch_auto_workers():
    """BasicSR's ``build_dataloader`` takes a number of workers only; add ``num_worker_per_gpu: auto``.
    And under DDP BasicSR's workers are spawned, yet stopped and started again at every epoch (its
    default ``persistent_workers: false``; its CUDAPrefetcher even starts them twice before the first
    batch): each start re-imports torch and BasicSR in every worker (4 spawned workers of the in-memory
    type: 15 s at every epoch on a 2-core machine, 0.01 s kept). Spawned workers are kept through epochs
    unless the file sets ``persistent_workers`` (logged)."""
    import multiprocessing

    import basicsr.data
    upstream = basicsr.data.build_dataloader
    if getattr(upstream, 'resolves_auto_workers', False):
        return False

    @functools.wraps(upstream)
    def build_dataloader(dataset, dataset_opt, num_gpu=1, dist=False, sampler=None, seed=None):
        if dataset_opt.get('phase') == 'train' and dataset_opt.get('num_worker_per_gpu') == 'auto':
            dataset_opt = dict(dataset_opt, num_worker_per_gpu=resolve_auto_workers(num_gpu, dist))
        if dataset_opt.get('num_worker_per_gpu') == 0 and dataset_opt.get('persistent_workers'):
            dataset_opt = dict(dataset_opt, persistent_workers=False)  # the DataLoader refuses it without workers
        spawned = multiprocessing.get_start_method(allow_none=True) == 'spawn'
        if (dataset_opt.get('phase') == 'train' and dataset_opt.get('persistent_workers') is None
                and dataset_opt.get('num_worker_per_gpu') and spawned):
            from basicsr.utils import get_root_logger
            dataset_opt = dict(dataset_opt, persistent_workers=True)
            get_root_logger().info('persistent_workers: not set -> true (spawned loader workers are kept through '
                                   'epochs rather than started again at each one)')
        return upstream(dataset, dataset_opt, num_gpu=num_gpu, dist=dist, sampler=sampler, seed=seed)

    build_dataloader.resolves_auto_workers = True
    for name in ('basicsr.data', 'basicsr.train', 'basicsr.test'):  # those that imported the name
        module = sys.modules.get(name)
        if getattr(module, 'build_dataloader', None) is upstream:
            module.build_dataloader = build_dataloader
    return True


def resolve_auto_workers(num_gpu, dist):
    """``num_worker_per_gpu: auto`` as a number: this host's usable cores shared among its GPUs
    (the ranks of this host under DDP; ``num_gpu`` without a launcher), one each left for the
    training processes, at most :data:`~basicsr_ext.common.resources.AUTO_WORKER_CAP`; logged."""
    from basicsr.utils import get_root_logger

    from basicsr_ext.common import resources
    cores = resources.usable_cores()
    gpus = resources.ranks_on_host() if dist else max(1, num_gpu or 0)
    workers = resources.auto_workers(cores, gpus)
    sharing = f'{gpus} {"ranks" if dist else "GPUs"} on this host' if gpus > 1 else 'one training process'
    get_root_logger().info(f'num_worker_per_gpu: auto -> {workers} ({cores} usable cores, {sharing}, '
                           f'at most {resources.AUTO_WORKER_CAP} each)')
    return workers


#: Before anything imports ``basicsr``: without these, ``import basicsr`` fails.
IMPORT_FIXES = (patch_functional_tensor, patch_distutils)
#: After: these change what BasicSR does; those of :mod:`basicsr_ext.patches.safety` (saving, loading,
#: resuming, logging, --force_yml) come last.
BEHAVIOUR_FIXES = (patch_safe_loader, patch_cpu_distributed, patch_ddp_spawns_workers, patch_realesrgan_cpu,
                   patch_filter2d_layout, patch_optimizers, damaged.patch_skip_damaged_images, safety.patch_resume,
                   safety.patch_resume_warns_of_kept_settings, safety.patch_atomic_save, safety.patch_safe_load_network,
                   safety.patch_log_file_errors, safety.patch_force_yml_values, patch_eta_off_by_one,
                   pipeline.patch_quiet_terminal, patch_auto_workers, patch_validate_bare_network,
                   runs.patch_train_lock_and_signals, runs.patch_test_lock)
PATCHES = IMPORT_FIXES + BEHAVIOUR_FIXES

_checked = set()


def _run(patches):
    for patch in patches:
        if patch not in _checked:
            _checked.add(patch)
            if patch():
                APPLIED.append(patch.__name__)
    return APPLIED


def apply_import_fixes():
    """Apply the patches ``import basicsr`` needs, once; returns the names of all patches applied so far."""
    return _run(IMPORT_FIXES)


def apply():
    """Apply every patch the running stack needs, once; returns the names of those applied."""
    return _run(PATCHES)

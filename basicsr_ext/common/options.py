"""Checks a BasicSR option file before BasicSR runs it.

BasicSR reports a missing file, a typo in a network name or a dataset folder that does not
exist as a long traceback from deep inside its pipeline, often after minutes of set-up.
:func:`load_and_check` finds those mistakes first and raises :class:`OptionError` with one
line naming the file and the key. The files of PairedImageDataset and SingleImageDataset
phases are checked too (:mod:`basicsr_ext.common.datacheck`): an empty folder, an HR image without
its LR partner (or the reverse), an LR that is not HR / scale, an HR smaller than ``gt_size``,
an image that does not decode, an LMDB cut short, without a key of its meta_info.txt or with a
damaged value is named, with what is wrong, before training starts.
For BasicSR's Real-ESRGAN pipeline (RealESRGANDataset, RealESRNetModel, RealESRGANModel) the
degradation and kernel settings, ``gt_size``, ``queue_size`` and every image of the ``meta_info``
list are checked, and a perceptual loss's VGG weights must be on disk (where, named in the error).
An option name one or two letters from one BasicSR reads (``pretrain_netwrok_g``, ``vall``,
``loss_wieght``: :data:`KNOWN_KEYS`) is named with the option meant; loss, metric and scheduler
types must be ones BasicSR has; the keys BasicSR reads without a default (``logger``,
``val.save_img``, a training set's ``gt_size`` and flips) must be there; two test sets may not
share a name (their results are kept by name).
``network_g`` is built once (unknown keys, ``upscale`` against ``scale``, values the network
refuses, ``ASID_D8`` with another group count), ``scale``, ``total_iter`` and the batch size must be
positive integers, ``gt_size`` a multiple of ``scale``, the logging, checkpoint and validation
frequencies positive, each optimizer of a known type with a positive ``lr``, the scheduler's
milestones increasing whole numbers, ``num_gpu`` no more than the machine has; ``--force_yml``
values keep the type of the option they replace (and are never passed to ``eval``), and the
pretrained checkpoint, and the one a resumed run loads, must load with the safe loader, be
finite and fit ``network_g`` (scale, group count, value range).
"""
import os

from basicsr.archs import ARCH_REGISTRY
from basicsr.data import DATASET_REGISTRY
from basicsr.models import MODEL_REGISTRY

from basicsr_ext.common import resources, testsets
from basicsr_ext.common.checkpoints import RunError, find_resume_state, params_of, read_checkpoint, resume_weights
from basicsr_ext.common.datacheck import (DataError, IN_MEMORY_ALTERNATIVES, check_gt_list, check_paired,
                                           check_single, decoded_sizes, paired_paths)
from basicsr_ext.common.optionfile import OptionError, read_with_overrides


def _require(opt, key, path, section=''):
    node = opt.get(key) if isinstance(opt, dict) else None
    if node is None:
        raise OptionError(f'{path}: missing option {section + key}')
    return node


def registered(registry, name):
    """What ``registry.get(name)`` returns, or None, without its printed note: BasicSR registers its
    Real-ESRGAN classes as ``<name>_basicsr`` and finds them by ``<name>`` too."""
    return registry._obj_map.get(name) or registry._obj_map.get(f'{name}_basicsr')


def _check_registered(name, registry, what, key, path):
    if registered(registry, name) is None:
        known = ', '.join(sorted(k[:-len('_basicsr')] if k.endswith('_basicsr') else k for k in registry.keys()))
        raise OptionError(f'{path}: {key}: {name!r} is not a registered {what} (known: {known})')


def _check_dataset(name, dataset, path):
    _check_registered(_require(dataset, 'type', path, f'datasets.{name}.'), DATASET_REGISTRY, 'dataset',
                      f'datasets.{name}.type', path)
    backend = (dataset.get('io_backend') or {}).get('type', 'disk')
    for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'meta_info'):
        value = dataset.get(key)
        if value is None:
            continue
        value = os.path.expanduser(str(value))
        if key.startswith('meta_info'):
            exists = os.path.isfile(value)
        elif backend == 'lmdb':
            exists = os.path.isfile(os.path.join(value, 'data.mdb'))
        else:
            exists = os.path.isdir(value)
        if not exists:
            kind = 'LMDB' if backend == 'lmdb' and not key.startswith('meta_info') else 'path'
            raise OptionError(f'{path}: datasets.{name}.{key}: {kind} {value} does not exist{_prepare_hint(value)}')


#: What writes the data layouts the shipped option files read (their first folder under datasets/).
PREPARE_COMMANDS = {'demo': 'basicsr prepare demo', 'DIV2K': 'basicsr prepare div2k --input ...',
                    'RealESRGAN': 'basicsr prepare realesrgan --input ...'}


def _prepare_hint(value):
    """' (what makes it)' for a missing data folder of the shipped layouts; relative paths are the
    current folder's."""
    parts = os.path.normpath(value).split(os.sep)
    if len(parts) < 2 or parts[0] != 'datasets':
        return ''
    command = PREPARE_COMMANDS.get(parts[1])
    if command is None and any(part.startswith(('GTmod', 'LRbicx')) for part in parts):
        command = 'basicsr prepare benchmark --input ...'  # Set5, BSDS200 ...
    if command is None:
        return ''
    return f' ({command} writes it, under the current folder)'


#: Dataset types whose options and files are those of BasicSR's PairedImageDataset.
PAIRED_TYPES = ('PairedImageDataset', 'InMemoryPairedImageDataset')


def _check_data(name, dataset, opt, path, is_train, launcher='none'):
    """The files of a paired / SingleImageDataset / RealESRGANDataset phase (after the folders exist), and
    whether an in-memory one fits this host's memory."""
    kind = dataset.get('type')
    where = f'{path}: datasets.{name}'
    if kind == 'RealESRGANDataset' and (dataset.get('io_backend') or {}).get('type', 'disk') == 'disk':
        try:
            check_gt_list(dataset, where)
        except DataError as e:
            raise OptionError(str(e)) from None
        return
    if kind not in (*PAIRED_TYPES, 'SingleImageDataset'):
        return
    for key in ('dataroot_gt', 'dataroot_lq') if kind in PAIRED_TYPES else ('dataroot_lq',):
        if dataset.get(key) is None:
            raise OptionError(f'{path}: missing option datasets.{name}.{key}')
    # BasicSR's phase is the name up to the first '_' (train, val, test)
    train_phase = is_train and name.split('_')[0] == 'train'
    try:
        if kind in PAIRED_TYPES:
            check_paired(dataset, opt.get('scale'), where, train_phase)
        else:
            check_single(dataset, where)
        if kind == 'InMemoryPairedImageDataset':
            gt, lq = decoded_sizes(dataset, paired_paths(dataset), where)
            resources.check_fits(sum(gt) + sum(lq), resources.ranks_on_host(launcher),
                                 f'{where}: {kind} ({len(gt)} pairs decoded)', IN_MEMORY_ALTERNATIVES)
    except (DataError, resources.NoRoomError) as e:
        raise OptionError(str(e)) from None


def _check_workers(dataset, where, path):
    """``num_worker_per_gpu``: a number of workers (0: the main process loads) or ``auto``."""
    value = dataset.get('num_worker_per_gpu', 0)
    if value == 'auto' or isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    raise OptionError(f"{path}: {where}num_worker_per_gpu: must be a number of workers (0 or more) or 'auto', "
                      f'got {value!r}')


def _check_prefetch(opt, path):
    train = (opt.get('datasets') or {}).get('train') or {}
    if train.get('prefetch_mode') != 'cuda':
        return
    import torch
    if opt.get('num_gpu') == 0 or not torch.cuda.is_available():
        raise OptionError(f"{path}: datasets.train.prefetch_mode: 'cuda' needs a CUDA GPU and there is none here "
                          f'(use --force_yml datasets:train:prefetch_mode=~)')
    if train.get('pin_memory') is not True:
        raise OptionError(f"{path}: datasets.train.pin_memory: prefetch_mode 'cuda' needs pin_memory: true")


def _positive_int(node, key, where, path, whole_floats=False):
    """``node[key]`` a positive integer; ``whole_floats``: 8.0 too (where BasicSR calls ``int()`` on
    it or takes it modulo; a batch size or a patch size of 8.0 fails in a DataLoader or a slice)."""
    value = node.get(key)
    integral = isinstance(value, int) or whole_floats and isinstance(value, float) and value.is_integer()
    if isinstance(value, bool) or not integral or value < 1:
        raise OptionError(f'{path}: {where}{key}: must be a positive integer, got {value!r}')


def _check_network(opt, path):
    """Build ``network_g`` as BasicSR will (cheap), so a bad argument is one line now, not a
    traceback after BasicSR has made the experiment folder. Returns the network."""
    import inspect
    network = dict(opt['network_g'])
    name = network.pop('type')
    cls = ARCH_REGISTRY.get(name)
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in network if k not in params]
        if unknown:
            raise OptionError(f'{path}: network_g.{unknown[0]}: not an option of {name} (its options: '
                              f'{", ".join(params)})')
    scale, upscale = opt.get('scale'), network.get('upscale')
    if scale is not None and upscale is not None and scale != upscale:
        raise OptionError(f'{path}: network_g.upscale: {upscale!r}, but scale is {scale!r}; they must be equal')
    try:
        net = cls(**network)
    except (TypeError, ValueError, AssertionError, KeyError, ZeroDivisionError, RuntimeError) as e:
        raise OptionError(f'{path}: network_g: {name}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}'
                          ) from None
    _check_variant(name, net, path)
    return net


#: Network types that name their group count: ``ASID_D8`` is ASID with 8 groups.
VARIANT_GROUPS = {'ASID_D8': 8}


def _check_variant(name, net, path):
    """A variant named by its group count, built with another one, would train (and save, and
    report) a different network under the variant's name."""
    groups = VARIANT_GROUPS.get(name)
    if groups is not None and getattr(net, 'num_groups', groups) != groups:
        raise OptionError(f'{path}: network_g.num_groups: {net.num_groups}, but {name} is the {groups}-group '
                          f'variant (leave num_groups out, or use type: ASID for {net.num_groups} groups)')


def _check_pretrained(opt, path, net):
    """``path.pretrain_network_g``: readable by the safe loader, finite, and the weights of ``net``."""
    paths = opt.get('path') or {}
    ckpt = paths.get('pretrain_network_g')
    if ckpt:
        _check_weights(opt, f'{path}: path.pretrain_network_g', ckpt, paths.get('param_key_g', 'params'), net,
                       strict=paths.get('strict_load_g', True) is not False)


def _check_resumed(opt, path, net, auto_resume):
    """The checkpoint a resumed run loads into ``network_g`` passes what a pretrained one must
    (:func:`_check_weights`): a resume with another value range or group count is refused as a
    pretrain with them is. Nothing to do for a fresh start; a state that cannot be resumed from
    at all is reported by the resume itself (``safety.patch_resume``)."""
    try:
        state_path, state = find_resume_state(opt, auto_resume)
    except RunError:
        return
    if state is None:
        return
    weights = resume_weights(opt, state).get('network_g')
    if weights:
        flag = '--auto_resume' if auto_resume else 'path.resume_state'
        _check_weights(opt, f'{path}: {flag} {state_path}', weights, 'params', net, strict=True)


def _check_weights(opt, where, ckpt, param_key, net, strict):
    """A checkpoint that a run loads into ``net``: readable by the safe loader, finite, and (for ASID)
    of its scale, group count and value range; with ``strict``, of its exact keys and shapes."""
    from asid_arch.checkpoint import ASID, CheckpointError, infer_config, key_mismatch, saved_value_range
    try:
        obj = read_checkpoint(os.path.expanduser(str(ckpt)))
        state_dict = params_of(obj, ckpt, param_key)
    except RunError as e:
        raise OptionError(f'{where}: {e}') from None
    if isinstance(net, ASID):
        try:
            found = infer_config(state_dict, name=ckpt)
        except CheckpointError as e:
            raise OptionError(f'{where}: {e}') from None
        for key in ('upscale', 'num_groups'):
            if found[key] != getattr(net, key):
                raise OptionError(f'{where}: {ckpt} has {key} {found[key]}, network_g asks for {getattr(net, key)}')
        saved = saved_value_range(obj)
        if saved is not None and tuple(saved) != tuple(net.value_range):
            raise OptionError(f'{where}: {ckpt} was trained with value_range {list(saved)}, network_g has '
                              f'{list(net.value_range)}')
    mismatch = key_mismatch(state_dict, net) if strict else ''
    if mismatch:
        raise OptionError(f'{where}: {ckpt} does not hold the weights of network_g ({opt["network_g"]["type"]}): '
                          f'{mismatch}')


def _positive_number(node, key, where, path):
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise OptionError(f'{path}: {where}{key}: must be a positive number, got {value!r}')


def _check_patch_size(opt, path):
    """``datasets.train.gt_size``: a positive multiple of ``scale`` (BasicSR crops LR patches of gt_size // scale)."""
    train = (opt.get('datasets') or {}).get('train') or {}
    if train.get('gt_size') is None:
        return
    _positive_int(train, 'gt_size', 'datasets.train.', path)
    scale = opt.get('scale')
    if isinstance(scale, int) and scale > 0 and int(train['gt_size']) % scale:
        raise OptionError(f'{path}: datasets.train.gt_size: {train["gt_size"]} is not a multiple of scale {scale} '
                          f'(the LR patch is gt_size / scale)')


def _check_frequencies(opt, path):
    """``logger.save_checkpoint_freq``, ``logger.print_freq`` and ``val.val_freq``: BasicSR takes the
    iteration modulo each, so 0 (or a negative or fractional value) fails at the first iteration."""
    for section, keys in (('logger', ('print_freq', 'save_checkpoint_freq')), ('val', ('val_freq', ))):
        node = opt.get(section)
        for key in keys:
            if isinstance(node, dict) and node.get(key) is not None:
                _positive_int(node, key, f'{section}.', path, whole_floats=True)


def _check_optimizers(opt, path):
    """Every ``train.optim_*``: a type BasicSR knows, a positive ``lr``, arguments the optimizer takes
    (it is built once on a dummy parameter, by BasicSR's own ``get_optimizer``)."""
    import torch
    from basicsr.models.base_model import BaseModel
    from basicsr_ext.common.optimizers import OPTIMIZERS
    train = opt.get('train') or {}
    for name in (k for k in train if k.startswith('optim_')):
        where = f'{path}: train.{name}'
        settings = dict(train[name] or {})
        kind = settings.pop('type', None)
        _positive_number(settings, 'lr', f'train.{name}.', path)
        lr = settings.pop('lr')
        try:
            # on the CPU (torch takes fused / capturable there too): no CUDA context before the run picks its GPU
            BaseModel.get_optimizer(None, kind, [torch.zeros(1, requires_grad=True)], lr, **settings)
        except NotImplementedError:
            raise OptionError(f'{where}.type: {kind!r} is not an optimizer BasicSR knows (known: '
                              f'{", ".join(OPTIMIZERS)})') from None
        except (TypeError, ValueError) as e:
            raise OptionError(f'{where}: {kind}: {str(e).strip().splitlines()[0]}') from None


def _milestones_error(milestones):
    """Why a scheduler's ``milestones`` cannot be used, or None."""
    if not isinstance(milestones, list):
        return f'must be a list of iterations, got {milestones!r}'
    bad = [m for m in milestones if isinstance(m, bool) or not isinstance(m, (int, float)) or m != int(m)]
    if bad:
        return f'must be whole iteration numbers, got {bad[0]!r} in {milestones}'
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        return f'must increase, got {milestones}'
    return None


def _check_scheduler(opt, path):
    """``train.scheduler``: a type BasicSR builds; its ``milestones`` whole numbers, increasing."""
    scheduler = (opt.get('train') or {}).get('scheduler') or {}
    if scheduler and scheduler.get('type') not in SCHEDULERS:
        raise OptionError(f'{path}: train.scheduler.type: {scheduler.get("type")!r} is not a scheduler BasicSR '
                          f'builds (known: {", ".join(SCHEDULERS)})')
    if 'milestones' in scheduler:
        error = _milestones_error(scheduler['milestones'])
        if error:
            raise OptionError(f'{path}: train.scheduler.milestones: {error}')


def option_warnings(opt, path):
    """Lines worth saying before a training run that is otherwise fine: milestones the run never reaches
    (a shortened run, e.g. ``--force_yml train:total_iter=1000``, may mean it)."""
    train = opt.get('train') or {}
    milestones, total = (train.get('scheduler') or {}).get('milestones'), train.get('total_iter')
    if not isinstance(milestones, list) or not isinstance(total, (int, float)):
        return []
    late = [m for m in milestones if isinstance(m, (int, float)) and m > total]
    if not late:
        return []
    return [f'{path}: train.scheduler.milestones: {", ".join(map(str, late))} beyond total_iter {total:g}: the '
            f'learning rate is never lowered there']


def _gpus_here():
    """The GPUs this process sees (torch is imported here, when a check needs it)."""
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_gpus(opt, path, launcher):
    """``num_gpu``: 'auto' or a whole number this machine has (BasicSR would fail in CUDA set-up)."""
    gpus = opt.get('num_gpu', 'auto')
    if gpus == 'auto':
        return
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise OptionError(f"{path}: num_gpu: must be 'auto' or a whole number of GPUs, got {gpus!r}")
    have = _gpus_here()
    needed = gpus if launcher == 'none' else min(gpus, 1)  # under a launcher, each rank uses one GPU
    if needed > have:
        hint = 'num_gpu: 0 runs on the CPU' if have == 0 else f'num_gpu: auto takes all {have}'
        raise OptionError(f'{path}: num_gpu: {gpus}, but this machine has {_count(have, "GPU")} '
                          f'({hint}; --force_yml num_gpu={have} overrides it)')


def _check_ranks_fit_gpus(launcher):
    """Under torchrun, no more processes on this host than the GPUs they all see (BasicSR gives each
    rank one GPU: two ranks on one fail in NCCL's set-up, with a traceback each). Only where every
    process sees the same GPUs, i.e. ``CUDA_VISIBLE_DEVICES`` is not set: a wrapper may give each
    rank its own, as SLURM may give each task (``--gpus-per-task``)."""
    local_ranks = os.environ.get('LOCAL_WORLD_SIZE', '')
    if launcher != 'pytorch' or not local_ranks.isdigit() or 'CUDA_VISIBLE_DEVICES' in os.environ:
        return
    have = _gpus_here()
    if 0 < have < int(local_ranks):
        raise OptionError(f'--launcher pytorch: {local_ranks} processes on this host, but it has '
                          f'{_count(have, "GPU")}: start one process per GPU (torchrun --nproc_per_node={have}), '
                          f'or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run on the CPU')


def _count(n, word):
    return f'{n} {word}' if n == 1 else f'{n} {word}s'


def _check_max_damaged(opt, path):
    """``datasets.train.max_damaged``: how many damaged images training skips before it stops
    (:mod:`basicsr_ext.patches.damaged`), a whole number >= 0; validation sets never skip."""
    for name, dataset in (opt.get('datasets') or {}).items():
        if not isinstance(dataset, dict) or 'max_damaged' not in dataset:
            continue
        if name != 'train':
            raise OptionError(f'{path}: datasets.{name}.max_damaged: only the train set skips damaged images '
                              f'(a validation metric would average other images)')
        value = dataset['max_damaged']
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise OptionError(f'{path}: datasets.train.max_damaged: must be a whole number >= 0, got {value!r}')


def _check_run_values(opt, path, launcher):
    """The training values BasicSR would trip over after making the experiment folder (issue 24, case 8)."""
    _check_patch_size(opt, path)
    _check_max_damaged(opt, path)
    _check_frequencies(opt, path)
    _check_optimizers(opt, path)
    _check_scheduler(opt, path)


# ---------------------------------------------------------------------------- Real-ESRGAN
#: What BasicSR's RealESRGANDataset reads from its options (a KeyError in a DataLoader worker otherwise).
REALESRGAN_DATASET_KEYS = ('dataroot_gt', 'io_backend', 'use_hflip', 'use_rot', 'final_sinc_prob') + tuple(
    key + suffix for suffix in ('', '2') for key in ('blur_kernel_size', 'kernel_list', 'kernel_prob', 'blur_sigma',
                                                     'betag_range', 'betap_range', 'sinc_prob'))
#: What RealESRNetModel / RealESRGANModel read from the top level of the options to degrade a batch.
DEGRADATION_KEYS = ('gt_size',) + tuple(
    key + suffix for suffix in ('', '2') for key in ('resize_prob', 'resize_range', 'gaussian_noise_prob',
                                                     'noise_range', 'poisson_scale_range', 'gray_noise_prob',
                                                     'jpeg_range')) + ('second_blur_prob',)
#: Keys of each model on top: which ground truth (plain or unsharp-masked) the losses see.
USM_KEYS = {'RealESRNetModel': ('gt_usm',), 'RealESRGANModel': ('l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm')}
#: RealESRGANDataset crops or pads every ground truth image to this size (hard-coded in BasicSR).
REALESRGAN_CROP = 400


def _check_realesrgan_dataset(name, dataset, path):
    for key in REALESRGAN_DATASET_KEYS + (('meta_info',) if (dataset.get('io_backend') or {}).get('type', 'disk')
                                          != 'lmdb' else ()):
        _require(dataset, key, path, f'datasets.{name}.')
    for suffix in ('', '2'):
        kernels, probs = dataset[f'kernel_list{suffix}'], dataset[f'kernel_prob{suffix}']
        if not isinstance(kernels, list) or not isinstance(probs, list) or len(kernels) != len(probs):
            raise OptionError(f'{path}: datasets.{name}.kernel_prob{suffix}: one probability per kernel of '
                              f'kernel_list{suffix} ({kernels!r}), got {probs!r}')


def _check_realesrgan_model(opt, path, is_train):
    """The top-level degradation options of RealESRNetModel / RealESRGANModel, and what each needs on top."""
    model = opt.get('model_type')
    model = model[:-len('_basicsr')] if str(model).endswith('_basicsr') else model
    if model not in USM_KEYS or not is_train:
        return
    train = opt['datasets']['train']
    degrading = opt.get('high_order_degradation', True)
    if degrading:
        for key in DEGRADATION_KEYS + USM_KEYS[model]:
            _require(opt, key, path)
        if train.get('type') != 'RealESRGANDataset':
            raise OptionError(f'{path}: datasets.train.type: {model} degrades the ground truth with the blur kernels '
                              f'of RealESRGANDataset, not {train.get("type")} (or set high_order_degradation: false)')
        gt_size, scale = opt['gt_size'], opt.get('scale', 4)
        if not isinstance(gt_size, int) or gt_size < scale or gt_size % scale or gt_size > REALESRGAN_CROP:
            raise OptionError(f'{path}: gt_size: must be a multiple of the scale {scale} up to {REALESRGAN_CROP} '
                              f'(RealESRGANDataset\'s crop), got {gt_size!r}')
        queue, batch = opt.get('queue_size', 180), train['batch_size_per_gpu']
        if not isinstance(queue, int) or queue < batch or queue % batch:
            raise OptionError(f'{path}: queue_size: the training pair pool must hold a whole number of batches '
                              f'(batch_size_per_gpu {batch}), got {queue!r}')
    if model == 'RealESRGANModel':
        _require(opt, 'network_d', path)
        _check_registered(_require(opt['network_d'], 'type', path, 'network_d.'), ARCH_REGISTRY, 'network',
                          'network_d.type', path)
        for key in ('optim_d', 'gan_opt'):
            _require(opt['train'], key, path, 'train.')


# ---------------------------------------------------------------------------- VGG weights
#: torchvision's ImageNet VGG19 weights, which BasicSR's VGGFeatureExtractor (PerceptualLoss) loads from
#: BasicSR's path or, when that file is missing, downloads through torchvision into torch's hub cache.
#: Size: the file at the URL (torchvision's metadata: _file_size 548.051 MiB).
VGG19_FILE, VGG19_BYTES = 'vgg19-dcbb9e9d.pth', 574_673_361
VGG19_URL = f'https://download.pytorch.org/models/{VGG19_FILE}'


def vgg_weight_places(vgg_type='vgg19'):
    """Where ``VGGFeatureExtractor(vgg_type=...)`` finds its weights without downloading, in its order."""
    import torch
    from basicsr.archs.vgg_arch import VGG_PRETRAIN_PATH
    from torchvision.models import get_model_weights
    url = get_model_weights(vgg_type).IMAGENET1K_V1.url
    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(url))
    return ([os.path.abspath(VGG_PRETRAIN_PATH)] if vgg_type == 'vgg19' else []) + [cached]


def _check_vgg_weights(opt, path):
    """``train.perceptual_opt``: the VGG weights are on disk (BasicSR would download them, mid-start)."""
    perceptual = (opt.get('train') or {}).get('perceptual_opt')
    if not perceptual or perceptual.get('type') != 'PerceptualLoss':
        return
    from basicsr.archs.vgg_arch import VGG_PRETRAIN_PATH
    vgg_type = str(perceptual.get('vgg_type', 'vgg19'))
    if vgg_type != 'vgg19' and os.path.exists(VGG_PRETRAIN_PATH):
        raise OptionError(f'{path}: train.perceptual_opt.vgg_type: BasicSR loads {os.path.abspath(VGG_PRETRAIN_PATH)} '
                          f'(VGG19) into any vgg_type, which fails for {vgg_type}: use vgg19 or move that file')
    try:
        places = vgg_weight_places(vgg_type.replace('_bn', '') if vgg_type == 'vgg19_bn' else vgg_type)
    except (ValueError, KeyError, AttributeError):
        raise OptionError(f'{path}: train.perceptual_opt.vgg_type: {vgg_type!r} is not a VGG of torchvision') from None
    if any(os.path.isfile(p) for p in places):
        return
    if vgg_type == 'vgg19':
        raise OptionError(f'{path}: train.perceptual_opt: needs the VGG19 weights {VGG19_FILE} ({VGG19_BYTES:,d} '
                          f'bytes, {VGG19_URL}): put the file at {places[0]} (or {places[1]}); BasicSR would try to '
                          f'download it')
    raise OptionError(f'{path}: train.perceptual_opt: needs the {vgg_type} weights: put '
                      f'{os.path.basename(places[-1])} at {places[-1]}; BasicSR would try to download it')


#: Options of earlier releases, and where they are now.
MOVED = {
    'model_type: TiledSRModel': 'model_type: ASIDModel (the same Model, renamed)',
    'network_g.fast_path': 'train: compile: true (model_type: ASIDModel); the network holds the architecture only',
    'network_g.precision': 'train: precision (model_type: ASIDModel); the network holds the architecture only',
}


def _check_speed_switches(opt, path, is_train, launcher='none'):
    """``train.compile`` / ``train.precision`` / ``train.kernels``: old places refused; read by ASIDModel
    only, which checks their values itself (``ASIDModel.check_options``)."""
    moved = [key for key in ('fast_path', 'precision') if key in (opt.get('network_g') or {})]
    if moved:
        key = f'network_g.{moved[0]}'
        raise OptionError(f'{path}: {key}: moved to {MOVED[key]}')
    if opt.get('model_type') == 'TiledSRModel':
        raise OptionError(f'{path}: model_type: TiledSRModel is now {MOVED["model_type: TiledSRModel"]}')
    train = opt.get('train') or {}
    switches = [key for key in ('compile', 'precision', 'kernels') if train.get(key) is not None]
    if is_train and switches and opt.get('model_type') != 'ASIDModel':
        raise OptionError(f'{path}: train.{switches[0]}: only model_type: ASIDModel reads it '
                          f'({opt.get("model_type")} would train without it)')


def _check_model_options(opt, path, is_train, launcher):
    """A registered Model may check its own options before the run: ``check_options(opt, is_train, launcher)``,
    a classmethod raising ValueError (as :class:`~basicsr_ext.training.models.ASIDModel` does)."""
    check = getattr(registered(MODEL_REGISTRY, opt['model_type']), 'check_options', None)
    if check is not None:
        try:
            check(opt, is_train=is_train, launcher=launcher)
        except ValueError as e:
            raise OptionError(f'{path}: {e}') from None


#: Option keys BasicSR (and ASIDModel, and BasicSR's Real-ESRGAN models) read, by section: a key
#: not among them but one letter or two from one that is missing is a typo (a custom model may
#: read other keys: those are left alone).
KNOWN_KEYS = {
    '': ('name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'network_g', 'network_d', 'path',
         'train', 'val', 'logger', 'dist_params', 'max_damaged', 'find_unused_parameters', 'queue_size',
         'high_order_degradation') + DEGRADATION_KEYS + tuple(k for keys in USM_KEYS.values() for k in keys),
    'path.': ('pretrain_network_g', 'pretrain_network_d', 'strict_load_g', 'strict_load_d', 'param_key_g',
              'param_key_d', 'resume_state', 'experiments_root', 'models', 'training_states', 'log',
              'visualization', 'results_root', 'root'),
    'train.': ('ema_decay', 'optim_g', 'optim_d', 'scheduler', 'total_iter', 'warmup_iter', 'pixel_opt',
               'perceptual_opt', 'gan_opt', 'ldl_opt', 'net_d_iters', 'net_d_init_iters', 'compile', 'precision',
               'kernels'),
    'val.': ('val_freq', 'save_img', 'suffix', 'metrics', 'pbar', 'tile', 'tile_overlap'),
    'logger.': ('print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb'),
    'loss': ('type', 'loss_weight', 'reduction', 'criterion', 'gan_type', 'real_label_val', 'fake_label_val',
             'layer_weights', 'vgg_type', 'use_input_norm', 'range_norm', 'perceptual_weight', 'style_weight'),
    'dataset': ('name', 'type', 'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'meta_info', 'filename_tmpl',
                'io_backend', 'gt_size', 'use_hflip', 'use_rot', 'use_shuffle', 'num_worker_per_gpu',
                'batch_size_per_gpu', 'dataset_enlarge_ratio', 'prefetch_mode', 'pin_memory', 'persistent_workers',
                'phase', 'scale', 'color', 'mean', 'std') + REALESRGAN_DATASET_KEYS,
}
#: The schedulers BasicSR's SRModel builds
SCHEDULERS = ('MultiStepLR', 'CosineAnnealingRestartLR')


def _check_typos(node, section, where, path):
    """A key of ``node`` that is no option of ``section`` but close to one that is missing: one line."""
    import difflib
    if not isinstance(node, dict):
        return
    known = KNOWN_KEYS[section]
    for key in node:
        if isinstance(key, str) and key not in known:
            close = difflib.get_close_matches(key, [k for k in known if k not in node], n=1, cutoff=0.8)
            if close:
                raise OptionError(f'{path}: {where}{key}: not an option BasicSR reads; did you mean {close[0]}?')


def _check_keys(opt, path, is_train):
    """Typos in option names (:data:`KNOWN_KEYS`), loss and metric types their registries do not
    know, the sections and dataset keys BasicSR reads without a default, and two test sets of one
    name (their results are kept by name)."""
    from basicsr.losses import LOSS_REGISTRY
    from basicsr.metrics import METRIC_REGISTRY
    _check_typos(opt, '', '', path)
    for section in ('path.', 'train.', 'val.', 'logger.'):
        _check_typos(opt.get(section[:-1]), section, section, path)
    for name, dataset in (opt.get('datasets') or {}).items():
        _check_typos(dataset, 'dataset', f'datasets.{name}.', path)
    train, val = opt.get('train') or {}, opt.get('val')
    for key, loss in train.items():
        if key.endswith('_opt') and isinstance(loss, dict):
            _check_typos(loss, 'loss', f'train.{key}.', path)
            _check_registered(_require(loss, 'type', path, f'train.{key}.'), LOSS_REGISTRY, 'loss',
                              f'train.{key}.type', path)
    if isinstance(val, dict):
        for name, metric in (val.get('metrics') or {}).items():
            _check_registered(_require(metric, 'type', path, f'val.metrics.{name}.'), METRIC_REGISTRY, 'metric',
                              f'val.metrics.{name}.type', path)
    if is_train:
        _require(opt, 'logger', path)
        for key in ('print_freq', 'save_checkpoint_freq'):
            _require(opt['logger'], key, path, 'logger.')
        if isinstance(val, dict):
            for key in ('val_freq', 'save_img'):
                _require(val, key, path, 'val.')
        dataset = (opt.get('datasets') or {}).get('train') or {}
        if dataset.get('type') in PAIRED_TYPES:
            for key in ('gt_size', 'use_hflip', 'use_rot'):
                _require(dataset, key, path, 'datasets.train.')
    elif isinstance(val, dict):
        _require(val, 'save_img', path, 'val.')
    if opt.get('scale') is not None:
        _positive_int(opt, 'scale', '', path)
    names = {}
    for key, dataset in (opt.get('datasets') or {}).items():
        if key != 'train' and isinstance(dataset, dict) and dataset.get('name') is not None:
            if dataset['name'] in names:
                raise OptionError(f'{path}: datasets.{key}.name: {dataset["name"]!r} is also the name of '
                                  f'datasets.{names[dataset["name"]]} (results are kept by name)')
            names[dataset['name']] = key


def check_options(opt, path, is_train=True, check_data=True, launcher='none', auto_resume=False):
    """Raise OptionError for the first problem BasicSR would otherwise hit later.

    ``check_data=False`` leaves out the look at every image file (the expensive part: under DDP
    only rank 0 does it).
    """
    _check_ranks_fit_gpus(launcher)  # the launch before the file
    _require(opt, 'name', path)
    _check_keys(opt, path, is_train)
    _check_speed_switches(opt, path, is_train, launcher)
    _check_registered(_require(opt, 'model_type', path), MODEL_REGISTRY, 'model', 'model_type', path)
    _check_model_options(opt, path, is_train, launcher)
    network = _require(opt, 'network_g', path)
    _check_registered(_require(network, 'type', path, 'network_g.'), ARCH_REGISTRY, 'network', 'network_g.type', path)
    datasets = _require(opt, 'datasets', path)
    if is_train:
        _require(datasets, 'train', path, 'datasets.')
        _require(opt, 'train', path)
    for name, dataset in datasets.items():
        if is_train and name != 'train' and not name.startswith('val'):
            raise OptionError(f'{path}: datasets.{name}: training phases are "train" and "val*"')
        _check_dataset(name, dataset, path)
        if dataset.get('type') == 'RealESRGANDataset':
            _check_realesrgan_dataset(name, dataset, path)
    for key, value in (opt.get('path') or {}).items():
        if value and (key.startswith('pretrain_network') or key == 'resume_state'):
            if os.path.isdir(os.path.expanduser(str(value))):
                raise OptionError(f'{path}: path.{key}: {value} is a folder, not a checkpoint file')
            if not os.path.isfile(os.path.expanduser(str(value))):
                raise OptionError(f'{path}: path.{key}: file {value} does not exist')
    if is_train:
        _positive_int(opt['train'], 'total_iter', 'train.', path, whole_floats=True)
        _positive_int(datasets['train'], 'batch_size_per_gpu', 'datasets.train.', path)
        _check_workers(datasets['train'], 'datasets.train.', path)
        _check_prefetch(opt, path)
        _check_run_values(opt, path, launcher)
        _check_realesrgan_model(opt, path, is_train)
        _check_vgg_weights(opt, path)
    _check_gpus(opt, path, launcher)
    net = _check_network(opt, path)
    _check_pretrained(opt, path, net)
    if is_train:
        _check_resumed(opt, path, net, auto_resume)
    if not check_data:
        return
    for name, dataset in datasets.items():
        _check_data(name, dataset, opt, path, is_train, launcher)


def check_read_options(opt, path, is_train=True, check_data=True, launcher='none', auto_resume=False):
    """Check the options read from ``path`` (with their overrides); returns the options BasicSR will run
    with: for ``basicsr test``, without the test sets that are not prepared (one line each)."""
    if not is_train:
        testsets.drop_missing(opt, path, OptionError)
    check_options(opt, path, is_train=is_train, check_data=check_data, launcher=launcher, auto_resume=auto_resume)
    return opt


def load_and_check(path, force_yml=None, is_train=True, check_data=True, launcher='none', auto_resume=False):
    """Read, override and check an option file; returns the options BasicSR will run with."""
    return check_read_options(read_with_overrides(path, force_yml), path, is_train, check_data, launcher,
                              auto_resume)

"""Checks a BasicSR option file before BasicSR runs it.

BasicSR reports a missing file, a typo in a network name or a dataset folder that does not
exist as a long traceback from deep inside its pipeline, often after minutes of set-up.
:func:`load_and_check` finds those mistakes first and raises :class:`OptionError` with one
line naming the file and the key. The files of PairedImageDataset and SingleImageDataset
phases are checked too (:mod:`basicsr_ext.datacheck`): an empty folder, an HR image without
its LR partner (or the reverse), an LR that is not HR / scale, an HR smaller than ``gt_size``
or a file that is not a readable image is named, with what is wrong, before training starts.
"""
import os
from copy import deepcopy

import yaml
from basicsr.archs import ARCH_REGISTRY
from basicsr.data import DATASET_REGISTRY
from basicsr.models import MODEL_REGISTRY
from basicsr.utils.options import _postprocess_yml_value, ordered_yaml

from basicsr_ext import testsets
from basicsr_ext.datacheck import DataError, check_paired, check_single


class OptionError(ValueError):
    """A problem with an option file, described in one line that names the file and key."""


def read_options(path):
    """Read an option file into a dict, or raise OptionError saying why it cannot be read."""
    if not os.path.isfile(path):
        raise OptionError(f'{path}: option file not found')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' (line {mark.line + 1})' if mark else ''
        raise OptionError(f'{path}: not valid YAML{where}: {getattr(e, "problem", e)}') from None
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f'{path}: cannot read option file: {e}') from None
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: expected a mapping of options, found {type(opt).__name__}')
    return opt


def apply_force_yml(opt, entries, path):
    """Apply ``--force_yml key:sub=value`` entries the way BasicSR does, without its bare KeyError."""
    opt = deepcopy(opt)
    for entry in entries or ():
        if '=' not in entry:
            raise OptionError(f'{path}: --force_yml {entry!r} is not of the form key:subkey=value')
        keys, value = (s.strip() for s in entry.split('=', 1))
        *parents, last = keys.split(':')
        node = opt
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise OptionError(f'{path}: --force_yml {entry!r}: no option {keys!r} to override')
        node[last] = _postprocess_yml_value(value)
    return opt


def _require(opt, key, path, section=''):
    node = opt.get(key) if isinstance(opt, dict) else None
    if node is None:
        raise OptionError(f'{path}: missing option {section + key}')
    return node


def _check_registered(name, registry, what, key, path):
    if name not in registry:
        known = ', '.join(sorted(registry.keys()))
        raise OptionError(f'{path}: {key}: {name!r} is not a registered {what} (known: {known})')


def _check_dataset(name, dataset, path):
    _check_registered(_require(dataset, 'type', path, f'datasets.{name}.'), DATASET_REGISTRY, 'dataset',
                      f'datasets.{name}.type', path)
    backend = (dataset.get('io_backend') or {}).get('type', 'disk')
    for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
        value = dataset.get(key)
        if value is None:
            continue
        value = os.path.expanduser(str(value))
        if key == 'meta_info_file':
            exists = os.path.isfile(value)
        elif backend == 'lmdb':
            exists = os.path.isfile(os.path.join(value, 'data.mdb'))
        else:
            exists = os.path.isdir(value)
        if not exists:
            kind = 'LMDB' if backend == 'lmdb' and key != 'meta_info_file' else 'path'
            raise OptionError(f'{path}: datasets.{name}.{key}: {kind} {value} does not exist')


def _check_data(name, dataset, opt, path, is_train):
    """The files of a PairedImageDataset / SingleImageDataset phase (after the folders exist)."""
    kind = dataset.get('type')
    where = f'{path}: datasets.{name}'
    if kind not in ('PairedImageDataset', 'SingleImageDataset'):
        return
    for key in ('dataroot_gt', 'dataroot_lq') if kind == 'PairedImageDataset' else ('dataroot_lq',):
        if dataset.get(key) is None:
            raise OptionError(f'{path}: missing option datasets.{name}.{key}')
    # BasicSR's phase is the name up to the first '_' (train, val, test)
    train_phase = is_train and name.split('_')[0] == 'train'
    try:
        if kind == 'PairedImageDataset':
            check_paired(dataset, opt.get('scale'), where, train_phase)
        else:
            check_single(dataset, where)
    except DataError as e:
        raise OptionError(str(e)) from None


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


def check_options(opt, path, is_train=True):
    """Raise OptionError for the first problem BasicSR would otherwise hit later."""
    _require(opt, 'name', path)
    _check_registered(_require(opt, 'model_type', path), MODEL_REGISTRY, 'model', 'model_type', path)
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
    for key, value in (opt.get('path') or {}).items():
        if value and (key.startswith('pretrain_network') or key == 'resume_state'):
            if not os.path.isfile(os.path.expanduser(str(value))):
                raise OptionError(f'{path}: path.{key}: file {value} does not exist')
    if is_train:
        _check_prefetch(opt, path)
    for name, dataset in datasets.items():
        _check_data(name, dataset, opt, path, is_train)


def load_and_check(path, force_yml=None, is_train=True):
    """Read, override and check an option file; returns the options BasicSR will see."""
    opt = apply_force_yml(read_options(path), force_yml, path)
    if not is_train:  # test the sets that are prepared, skipping the others with one line each
        testsets.drop_missing(opt, path, OptionError)
    check_options(opt, path, is_train=is_train)
    return opt

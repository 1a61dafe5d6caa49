"""Long runs that never lose work, and files that are read safely.

Patches of BasicSR 1.4.2 in the style of :mod:`basicsr_ext.patches.compat` (one small function per
shortcoming, each checking first whether the running BasicSR needs it; they are registered in
``compat.PATCHES``):

* :func:`patch_atomic_save`: checkpoints and training states are written to a temporary file
  in the same folder, synced and renamed; a failed save stops the run with :class:`RunError`
  (one line naming the path) instead of BasicSR's "Still cannot save ... Just ignore it".
* :func:`patch_safe_load_network`: ``BaseModel.load_network`` reads through the safe loader,
  explicitly, and refuses unreadable, code-carrying or non-finite checkpoints in one line.
* :func:`patch_resume`: ``--auto_resume`` takes the newest training state that loads, with
  its matching ``net_g``; the others are named on one line each.
* :func:`patch_resume_warns_of_kept_settings`: a scheduler or optimizer setting changed in the
  option file since the state was saved (the state's value is used) is a warning each.
* :func:`patch_log_file_errors`: a log file that cannot be written (full disk) is reported
  once and dropped, instead of a traceback for every log line.
* :func:`patch_force_yml_values`: ``--force_yml`` values are parsed without ``eval``.

Nothing here imports BasicSR at module level: :mod:`basicsr_ext.patches.compat` imports this module
before BasicSR may be imported.
"""
import collections
import contextlib
import functools
import inspect
import io
import logging
import os
import sys

import torch

from basicsr_ext.common.checkpoints import RunError, find_resume_state, params_of, read_checkpoint, reason
from basicsr_ext.common.files import write_file


# ----------------------------------------------------------------------------------------
# reading and writing checkpoints
# ----------------------------------------------------------------------------------------
def save_atomically(obj, path):
    """``torch.save(obj, path)`` that never leaves a half-written file under ``path``
    (:func:`basicsr_ext.common.files.write_file`); RunError names the path and why on failure."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialised first: a write error is then a plain OSError (ENOSPC, EFBIG)
    try:
        write_file(path, buffer.getbuffer())
    except Exception as e:
        raise RunError(f'cannot save {path}: {reason(e)}') from None


# ----------------------------------------------------------------------------------------
# the patches
# ----------------------------------------------------------------------------------------
def patch_atomic_save():
    """BasicSR's ``save_network`` / ``save_training_state`` write in place and ignore a failed save."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils.dist_util import master_only
    if 'Just ignore it' not in inspect.getsource(BaseModel.save_network):
        return False

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        # upstream's file name and contents, plus what an ASID checkpoint needs to be used alone
        # (imported here: the patches are applied while asid_arch may still be importing BasicSR)
        from asid_arch.checkpoint import checkpoint_metadata, without_module_prefix
        current_iter = 'latest' if current_iter == -1 else current_iter
        save_path = os.path.join(self.opt['path']['models'], f'{net_label}_{current_iter}.pth')
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        assert len(nets) == len(keys), 'The lengths of net and param_key should be the same.'
        save_dict = {}
        for net_, key in zip(nets, keys):
            bare = self.get_bare_model(net_)
            save_dict[key] = {k: v.cpu() for k, v in without_module_prefix(bare.state_dict()).items()}
            meta = checkpoint_metadata(bare)
            if meta is not None:
                save_dict['asid'] = meta
        save_atomically(save_dict, save_path)

    @master_only
    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers]}
        save_atomically(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    BaseModel.save_network = save_network
    BaseModel.save_training_state = save_training_state
    return True


def patch_safe_load_network():
    """``BaseModel.load_network`` omits ``weights_only``: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` would unpickle code."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import get_root_logger
    if 'weights_only=True' in inspect.getsource(BaseModel.load_network):
        return False

    def load_network(self, net, load_path, strict=True, param_key='params'):
        net = self.get_bare_model(net)
        obj = read_checkpoint(load_path)
        if param_key is not None and param_key not in obj and 'params' in obj:
            get_root_logger().info('Loading: params_ema does not exist, use params.')
            param_key = 'params'
        state_dict = params_of(obj, load_path, param_key)
        get_root_logger().info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: '
                               f'[{param_key}].')
        self._print_different_keys_loading(net, state_dict, strict)
        try:
            net.load_state_dict(state_dict, strict=strict)
        except RuntimeError as e:
            raise RunError(f'{load_path}: does not fit {net.__class__.__name__}: '
                           f'{str(e).splitlines()[-1].strip()}') from None

    BaseModel.load_network = load_network
    return True


def patch_resume():
    """BasicSR's ``load_resume_state`` needs CUDA, takes the newest state even if truncated, omits ``weights_only``."""
    import basicsr.train
    from basicsr.utils import check_resume
    if getattr(basicsr.train.load_resume_state, '_falls_back', False):
        return False

    def say(opt, msg):
        if opt.get('rank', 0) == 0:
            print(f'basicsr train: {msg}', file=sys.stderr, flush=True)

    def load_resume_state(opt):
        path, state = find_resume_state(opt, opt['auto_resume'], lambda msg: say(opt, msg))
        if state is None:
            return None
        opt['path']['resume_state'] = path
        check_resume(opt, state['iter'])
        return state

    load_resume_state._falls_back = True
    basicsr.train.load_resume_state = load_resume_state
    return True


def _plain(value):
    """A setting as an option file writes it: MultiStepRestartLR's milestones (a Counter) as their
    sorted list, tuples as lists, tensors as numbers."""
    if isinstance(value, dict):
        return sorted(collections.Counter(value).elements())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.tolist() if isinstance(value, torch.Tensor) else value


def settings_the_state_keeps(model, state):
    """``(option, value in the state, value in the option file)`` for each setting of ``train.scheduler``
    and ``train.optim_*`` that differs: BasicSR's ``resume_training`` loads the state's schedulers
    (their attributes replaced by the saved ones) and optimizers (the saved param groups), so the
    state's values are used. An lr is compared with the group's ``initial_lr``: the option's when the
    run first started (``lr`` itself is where the schedule has taken it since)."""
    train = model.opt['train']
    kept = []
    if len(state['optimizers']) != len(model.optimizers):  # BasicSR's resume_training refuses it, saying so
        return kept
    for key, wanted in (train.get('scheduler') or {}).items():
        saved = state['schedulers'][0].get(key) if state['schedulers'] else None  # one per optimizer, alike
        if key != 'type' and saved is not None and _plain(saved) != _plain(wanted):
            kept.append((f'train.scheduler.{key}', _plain(saved), wanted))
    for option, settings in train.items():  # optim_g: model.optimizer_g
        optimizer = getattr(model, 'optimizer_' + option[len('optim_'):], None) if option.startswith('optim_') else None
        if optimizer not in model.optimizers or not isinstance(settings, dict):
            continue
        group = state['optimizers'][model.optimizers.index(optimizer)]['param_groups'][0]
        for key, wanted in settings.items():
            saved = group.get('initial_lr', group.get('lr')) if key == 'lr' else group.get(key)
            if key != 'type' and saved is not None and _plain(saved) != _plain(wanted):
                kept.append((f'train.{option}.{key}', _plain(saved), wanted))
    return kept


def patch_resume_warns_of_kept_settings():
    """BasicSR's ``resume_training`` keeps the saved schedule and optimizer settings without a word when
    the option file now says otherwise (new milestones, periods, lr, gamma)."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import get_root_logger
    upstream = BaseModel.resume_training
    if getattr(upstream, '_warns_of_kept_settings', False):
        return False

    @functools.wraps(upstream)
    def resume_training(self, resume_state):
        for option, saved, wanted in settings_the_state_keeps(self, resume_state):
            get_root_logger().warning(f"{option}: the resumed state's {saved} is used, not the option file's {wanted}")
        return upstream(self, resume_state)

    resume_training._warns_of_kept_settings = True
    BaseModel.resume_training = resume_training
    return True


def _drop_file_handler(logger, handler, record):
    """``handleError`` of BasicSR's log file: say once that it cannot be written, then stop writing it."""
    error = sys.exc_info()[1]
    logger.removeHandler(handler)
    with contextlib.suppress(Exception):
        handler.close()
    print(f'basicsr: warning: cannot write the log file {handler.baseFilename} ({reason(error)}); '
          f'logging to the console only', file=sys.stderr, flush=True)


def patch_log_file_errors():
    """BasicSR's log file, unwritable (a full disk), makes ``logging`` print a traceback for every log line."""
    from basicsr.utils import logger as basicsr_logger
    upstream = basicsr_logger.get_root_logger
    if getattr(upstream, '_quiet_file_errors', False):
        return False

    @functools.wraps(upstream)
    def get_root_logger(*args, **kwargs):
        logger = upstream(*args, **kwargs)
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and not getattr(handler, '_reports_once', False):
                handler.handleError = functools.partial(_drop_file_handler, logger, handler)
                handler._reports_once = True
        return logger

    get_root_logger._quiet_file_errors = True
    for module in list(sys.modules.values()):  # every `from basicsr.utils import get_root_logger` so far
        if getattr(module, '__name__', '').startswith('basicsr') and \
                getattr(module, 'get_root_logger', None) is upstream:
            module.get_root_logger = get_root_logger
    return True


def patch_force_yml_values():
    """BasicSR's ``--force_yml`` passes values that start with ``[`` to ``eval``: a value can run code."""
    from basicsr.utils import options
    if 'eval(' not in inspect.getsource(options._postprocess_yml_value):
        return False
    from basicsr_ext.common.optionfile import parse_yml_value
    options._postprocess_yml_value = parse_yml_value
    return True

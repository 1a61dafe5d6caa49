"""Reading checkpoints and training states during a run, with one-line errors.

What the option checker, ``load_network`` and ``--auto_resume`` share (the last two through the
patches of :mod:`basicsr_ext.patches.safety`): the safe loader, BasicSR's choice of
``params``/``params_ema``, the ``module.`` prefix of DDP-saved weights removed, non-finite
weights refused. The checkpoint format itself is :mod:`asid_arch.checkpoint`'s.
"""

import os
import re

import torch

# asid_arch is imported inside the functions: the patches use this module while BasicSR, which
# asid_arch imports, is still being imported.


class RunError(Exception):
    """A failure during a run (a save that failed, nothing to resume from, an unusable
    checkpoint), in one line naming the file; ``basicsr train`` / ``test`` print it and exit 1."""


def read_checkpoint(path, map_location='cpu'):
    """``torch.load(path, weights_only=True)``, the argument passed explicitly so that
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn the safe loader off; RunError on failure."""
    from asid_arch.checkpoint import CheckpointError, read_file
    try:
        return read_file(path, map_location=map_location)
    except CheckpointError as e:
        raise RunError(str(e)) from None


def reason(e):
    """Why ``e`` happened, in a few words for a one-line message."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = str(e).strip()
    return f'{type(e).__name__}: {text.splitlines()[0]}' if text else type(e).__name__


def params_of(obj, path, param_key):
    """The state_dict under ``param_key`` as BasicSR's load_network picks it (None: the whole file),
    without ``module.`` prefixes; RunError if there is none, or if it holds NaN or infinity."""
    if param_key is not None:
        if param_key not in obj and 'params' in obj:
            param_key = 'params'
        if not isinstance(obj, dict) or param_key not in obj:
            keys = ', '.join(map(repr, list(obj)[:4])) if isinstance(obj, dict) else type(obj).__name__
            raise RunError(f'{path}: no {param_key!r} entry in the checkpoint (found {keys}); for a raw '
                           f'state_dict set path.param_key_g: ~')
        obj = obj[param_key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RunError(f'{path}: expected a state_dict (a dict of tensors), found {type(obj).__name__}')
    from asid_arch.checkpoint import non_finite_key, without_module_prefix
    state_dict = without_module_prefix(obj)
    bad = non_finite_key(state_dict)
    if bad is not None:
        raise RunError(f'{path}: {bad} holds NaN or infinite values: the checkpoint is unusable')
    return state_dict


# ----------------------------------------------------------------------------------------
# resuming: the state a run resumes from, and the checkpoints it loads with it
# ----------------------------------------------------------------------------------------
def _resume_device():
    return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')


def load_training_state(path, opt):
    """A BasicSR training state and the checkpoints it resumes with, all readable; RunError if not."""
    state = read_checkpoint(path, map_location=_resume_device())
    if not isinstance(state, dict) or not isinstance(state.get('iter'), int) or 'optimizers' not in state:
        raise RunError(f'{path}: not a BasicSR training state (no iter / optimizers)')
    for weights in resume_weights(opt, state).values():
        if not os.path.isfile(weights):
            raise RunError(f'{path}: its {weights} is missing')
        params_of(read_checkpoint(weights), weights, 'params')
    return state


def find_resume_state(opt, auto_resume, say=lambda msg: None):
    """(path, state) of the training state a run resumes from, or (None, None) for a fresh start.

    ``path.resume_state`` if set; with ``auto_resume`` the newest state in
    ``experiments/<name>/training_states`` that loads with its networks (``say`` gets a line for
    each one skipped). RunError when none of the states there can be resumed from.
    """
    if not auto_resume:
        path = (opt.get('path') or {}).get('resume_state')
        return (path, load_training_state(path, opt)) if path else (None, None)
    from basicsr.utils import scandir
    state_dir = os.path.join('experiments', opt['name'], 'training_states')
    names = list(scandir(state_dir, suffix='.state')) if os.path.isdir(state_dir) else []
    numbered = sorted((int(n[:-len('.state')]), n) for n in names if re.fullmatch(r'\d+\.state', n))
    for _, name in reversed(numbered):
        path = os.path.join(state_dir, name)
        try:
            return path, load_training_state(path, opt)
        except RunError as e:
            say(f'--auto_resume: skipped {e}')
    if numbered:
        raise RunError(f'--auto_resume: none of the {len(numbered)} training states in {state_dir} can be '
                       f'resumed from (named above); move them away to start afresh')
    return None, None


def resume_weights(opt, state):
    """{network option ('network_g', ...): the checkpoint a run resuming from ``state`` loads into it}."""
    paths = opt.get('path') or {}
    ignored = paths.get('ignore_resume_networks') or ()
    models = paths.get('models') or os.path.join('experiments', opt['name'], 'models')
    return {network: os.path.join(models, f'net_{network[len("network_"):]}_{state["iter"]}.pth')
            for network in opt if network.startswith('network_') and network not in ignored}

"""Reading checkpoints and training states during a run, with one-line errors.

What the option checker, ``load_network`` and ``--auto_resume`` share (the last two through the
patches of :mod:`basicsr_ext.patches.safety`): the safe loader, BasicSR's choice of
``params``/``params_ema``, the ``module.`` prefix of DDP-saved weights removed, non-finite
weights refused. The checkpoint format itself is :mod:`asid_arch.checkpoint`'s.
"""

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

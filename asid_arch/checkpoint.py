"""Loading ASID checkpoints: the authors' release files and BasicSR's own.

Two formats exist:

* the authors' release: a raw ``state_dict`` (``{'input.weight': ..., 'block0...': ...}``),
  trained on images scaled to [-1, 1];
* BasicSR checkpoints (``experiments/*/models/net_g_*.pth``): ``{'params': state_dict}`` and,
  when EMA is enabled, also ``{'params_ema': state_dict}``; trained on [0, 1] data.

Files are only ever read with ``torch.load(..., weights_only=True)``: a checkpoint that
carries code or arbitrary objects is refused, never executed. Every problem is reported as
a :class:`CheckpointError` with one line naming the checkpoint, what was expected and what
was found.
"""
import glob
import math
import os
import pickle
import re

import torch
import yaml

from .asid_arch import ASID

#: Keys every ASID state_dict has, whatever the scale and number of groups.
REQUIRED_KEYS = ('input.weight', 'output.weight', 'up.0.weight', 'block0.res_end.weight')

_BLOCK_RE = re.compile(r'^block(\d+)\.')


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, described in one line naming the file."""


def _describe(source):
    """Name of a checkpoint for messages: its path, or a placeholder for an in-memory dict."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return '<in-memory state_dict>'


def read_file(path, map_location='cpu'):
    """``torch.load(path, weights_only=True)``, passed explicitly: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    overrides only a call that leaves ``weights_only`` out. CheckpointError, one line, on failure."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise CheckpointError(f'{name}: checkpoint file not found')
    if not os.path.isfile(name):
        raise CheckpointError(f'{name}: expected a checkpoint file, found a directory or special file')
    with open(name, 'rb') as f:
        head = f.read(4)
    if head and not (head.startswith(b'PK') or head.startswith(b'\x80')):  # torch.save: a zip, or a pickle (legacy)
        raise CheckpointError(f'{name}: cannot read checkpoint: not a torch.save file (neither a zip archive nor a '
                              f'pickle)')
    try:
        return torch.load(name, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if 'weights only load failed' in text.lower():
            # the safe loader met a global or opcode it does not allow: code or arbitrary objects
            culprit = next((line.strip() for line in text.splitlines() if 'nsupported' in line), '')
            what = f' ({culprit.rstrip(".")})' if culprit else ''
            raise CheckpointError(f'{name}: refused to load: expected only tensors and plain containers, found '
                                  f'other objects or code{what}; checkpoints are read with weights_only=True') from None
        detail = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise CheckpointError(f'{name}: not a readable PyTorch checkpoint (corrupt or not a torch.save file): '
                              f'{detail}') from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            ImportError, MemoryError) as e:
        # zip reader errors (truncated / corrupt archive), short reads, garbage bytes
        detail = str(e).strip().splitlines()[0].split('. ')[0] if str(e).strip() else 'unexpected end of file'
        raise CheckpointError(f'{name}: cannot read checkpoint (truncated or corrupt file?): '
                              f'{type(e).__name__}: {detail}') from None


def without_module_prefix(state_dict):
    """The state_dict with the ``module.`` prefix of weights saved from a DDP/DataParallel wrapper removed."""
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}


def _is_state_dict(obj):
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_state_dict(path_or_dict):
    """Read an ASID state_dict from a checkpoint file or an already loaded object.

    Accepted layouts:

    * a raw state_dict (the authors' release files);
    * BasicSR's ``{'params': sd}`` / ``{'params_ema': sd}`` (``net_g_*.pth``). When both are
      present ``params_ema`` is used: it is what BasicSR saves as the EMA of the weights
      when ``ema_decay > 0``, and the better model; ``params`` otherwise.

    A ``module.`` prefix (weights saved from a DistributedDataParallel wrapper) is removed.

    Args:
        path_or_dict (str | os.PathLike | dict): Checkpoint path (read with
            ``torch.load(map_location='cpu', weights_only=True)``) or a loaded object.

    Returns:
        tuple[dict, bool]: the state_dict (str -> Tensor) and whether the input was in
        BasicSR's format (``params``/``params_ema`` wrapper).

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, corrupt), refused by the
            safe loader (carries code/objects), not a state_dict, or not an ASID state_dict.
    """
    name = _describe(path_or_dict)
    obj = read_file(path_or_dict) if isinstance(path_or_dict, (str, os.PathLike)) else path_or_dict
    return _state_dict_of(obj, name)


def _state_dict_of(obj, name):
    if not isinstance(obj, dict):
        raise CheckpointError(f'{name}: expected a state_dict (a dict of tensors), found {type(obj).__name__}')

    is_basicsr = False
    for key in ('params_ema', 'params'):
        if key in obj:
            if not _is_state_dict(obj[key]):
                raise CheckpointError(f'{name}: expected {key!r} to hold a state_dict (a dict of tensors), found '
                                      f'{type(obj[key]).__name__}')
            obj, is_basicsr = obj[key], True
            break

    if not _is_state_dict(obj):
        bad = next(k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        found = f'{type(obj[bad]).__name__} under key {bad!r}'
        raise CheckpointError(f"{name}: expected a state_dict (a dict of tensors) or BasicSR's "
                              f"{{'params': ...}} / {{'params_ema': ...}}, found {found} "
                              f'(top-level keys: {_preview(obj)})')
    obj = without_module_prefix(obj)

    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f'{name}: not an ASID state_dict: expected keys such as {", ".join(REQUIRED_KEYS)}; '
                              f'missing {", ".join(missing)} (found {len(obj)} keys: {_preview(obj)})')
    return obj, is_basicsr


def _preview(keys, count=4, quote=True):
    keys = list(keys)
    shown = ', '.join(repr(k) if quote else str(k) for k in keys[:count])
    return shown + (f', ... ({len(keys) - count} more)' if len(keys) > count else '') if keys else 'none'


def infer_config(state_dict, name='<state_dict>'):
    """Read the network configuration off the tensor shapes of an ASID state_dict.

    Args:
        state_dict (dict): An ASID state_dict (as returned by :func:`load_state_dict`).
        name (str): How error messages name the checkpoint. Default: '<state_dict>'.

    Returns:
        dict: ``upscale`` (``up.0.weight`` has 3*s*s output channels), ``num_groups`` (the
        number of ``block{i}`` groups), ``num_feat`` (output channels of ``input``) and
        ``window_size`` (from the (2w-1)^2 rows of ``rel_pos_bias``) -- the keyword
        arguments of :class:`ASID` that the weights determine.

    Raises:
        CheckpointError: the shapes do not form a valid ASID.
    """
    for key in REQUIRED_KEYS:
        if key not in state_dict:
            raise CheckpointError(f'{name}: not an ASID state_dict: missing {key!r}')
    up = state_dict['up.0.weight'].shape[0]
    scale = math.isqrt(up // 3) if up % 3 == 0 else 0
    if scale < 1 or 3 * scale * scale != up:
        raise CheckpointError(f'{name}: up.0.weight has {up} output channels; expected 3*s*s for an integer scale s')
    groups = sorted({int(m.group(1)) for m in map(_BLOCK_RE.match, state_dict) if m})
    if groups != list(range(len(groups))):
        found = ', '.join(f'block{i}' for i in groups) or 'none'
        raise CheckpointError(f'{name}: expected groups block0 .. block{{n-1}}, found {found}')
    config = {'upscale': scale, 'num_groups': len(groups), 'num_feat': state_dict['input.weight'].shape[0]}
    bias = state_dict.get('block0.residual_layer.0.SLA1.attn.rel_pos_bias.weight')
    if bias is not None:
        side = math.isqrt(bias.shape[0])
        if side * side != bias.shape[0] or side % 2 == 0:
            raise CheckpointError(f'{name}: rel_pos_bias has {bias.shape[0]} rows; expected (2w-1)^2')
        config['window_size'] = (side + 1) // 2
    return config


def training_value_range(path):
    """``network_g.value_range`` of the run that wrote a BasicSR checkpoint, or None.

    BasicSR copies a run's option file into ``experiments/<name>/``, beside the ``models/``
    folder its checkpoints are saved in. The value range is not in the weights, and a
    network trained on [-1, 1] (as ``options/train_ASID_x4_demo.yml``) gives wrong colours
    when run on [0, 1], so it is read from there when exactly one option file is found.
    """
    if not isinstance(path, (str, os.PathLike)):
        return None
    models_dir = os.path.dirname(os.path.abspath(path))
    if os.path.basename(models_dir) != 'models':
        return None
    run_dir = os.path.dirname(models_dir)
    ranges = set()
    for option_file in glob.glob(os.path.join(glob.escape(run_dir), '*.yml')):
        try:
            with open(option_file, encoding='utf-8') as f:
                network = (yaml.safe_load(f) or {}).get('network_g') or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if str(network.get('type', '')).startswith('ASID'):
            ranges.add(tuple(network.get('value_range', (0, 1))))
    return ranges.pop() if len(ranges) == 1 else None


#: Top-level key under which checkpoints saved by ``basicsr train`` (:mod:`basicsr_ext.patches.safety`)
#: describe the ASID they hold; BasicSR's ``load_network`` reads only ``params`` and ignores it.
METADATA_KEY = 'asid'


def checkpoint_metadata(net):
    """What a checkpoint of ``net`` needs to be used alone: variant, scale, sizes and value range
    (plain values, which the safe loader reads), or None for a network that is not an ASID."""
    if not isinstance(net, ASID):
        return None
    return {'type': type(net).__name__, 'upscale': net.upscale, 'num_groups': net.num_groups,
            'num_feat': net.num_feat, 'window_size': net.window_size, 'value_range': list(net.value_range)}


def saved_value_range(obj):
    """The value range a checkpoint (a loaded object) records, or None."""
    meta = obj.get(METADATA_KEY) if isinstance(obj, dict) else None
    value_range = meta.get('value_range') if isinstance(meta, dict) else None
    return tuple(value_range) if isinstance(value_range, (list, tuple)) and len(value_range) == 2 else None


def non_finite_key(state_dict):
    """The first key whose tensor holds NaN or infinity, or None."""
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return key
    return None


def key_mismatch(state_dict, net):
    """What keeps ``state_dict`` from loading into ``net`` with ``strict=True``, in one line: the
    missing keys, the unexpected ones and those of another shape, each counted with the first
    three named (``"missing 2: 'a', 'b'; wrong shape 1: 'c' is (47,) in the file, (48,) in the
    model"``); '' when it loads. The one key and shape check: :func:`build_asid` and the option
    checks of ``basicsr train``/``test`` (``path.pretrain_network_g``, a resumed state) use it."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f'{k!r} is {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model'
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    return '; '.join(f'{label} {len(items)}: {_preview(items, 3, quote)}'
                     for label, items, quote in (('missing', missing, True), ('unexpected', unexpected, True),
                                                 ('wrong shape', mismatched, False)) if items)


def build_asid(path_or_state, upscale=None, num_groups=None, value_range=None):
    """Build an :class:`ASID` in eval mode with a checkpoint's weights, loaded strictly.

    Args:
        path_or_state (str | os.PathLike | dict): Checkpoint file or loaded object, in any
            layout :func:`load_state_dict` accepts.
        upscale (int, optional): Expected scale; checked against the weights.
        num_groups (int, optional): Expected number of groups (3: ASID, 8: ASID-D8);
            checked against the weights.
        value_range (tuple, optional): (0, 1) or (-1, 1). Default: (-1, 1) for raw
            state_dicts (the authors' release was trained on [-1, 1]); for BasicSR
            checkpoints the one the file records (:data:`METADATA_KEY`, written by
            ``basicsr train``), else the ``network_g.value_range`` of the training run's
            option file beside ``models/`` (:func:`training_value_range`), else (0, 1)
            (BasicSR trains on [0, 1]), noted in ``model.value_range_note``.

    Returns:
        ASID: the network, in eval mode, on the CPU.

    Raises:
        CheckpointError: unreadable checkpoint, non-finite weights, an override that
            contradicts the weights, or weights that do not load with ``strict=True``.
    """
    name = _describe(path_or_state)
    obj = read_file(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) else path_or_state
    state_dict, is_basicsr = _state_dict_of(obj, name)
    bad = non_finite_key(state_dict)
    if bad is not None:
        raise CheckpointError(f'checkpoint {name}: {bad} holds NaN or infinite values: the weights are unusable')
    config = infer_config(state_dict, name=name)
    if upscale is not None and upscale != config['upscale']:
        raise CheckpointError(f'checkpoint {name} is a x{config["upscale"]} model, but upscale={upscale!r} was '
                              f'requested')
    if num_groups is not None and num_groups != config['num_groups']:
        raise CheckpointError(f'checkpoint {name} has {config["num_groups"]} groups, but num_groups={num_groups!r} '
                              f'was requested')
    note = None
    if value_range is None and is_basicsr:
        value_range = saved_value_range(obj) or training_value_range(path_or_state)
        if value_range is None:
            value_range = (0, 1)
            note = ('assumed: the checkpoint does not record it and no option file of its run is beside it; '
                    'set it with --value-range / value_range=')
    elif value_range is None:
        value_range = (-1, 1)
    model = ASID(value_range=value_range, **config)
    #: Why the value range is a guess, for the model line of ``basicsr infer``; None when known.
    model.value_range_note = note

    mismatch = key_mismatch(state_dict, model)
    if mismatch:
        arch = ', '.join(f'{k}={v}' for k, v in config.items())
        raise CheckpointError(f'checkpoint {name} does not match ASID({arch}): {mismatch}')
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # pragma: no cover - the checks above catch what strict loading would
        raise CheckpointError(f'checkpoint {name}: {str(e).splitlines()[0]}') from None
    return model.eval()

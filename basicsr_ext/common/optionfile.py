"""Reading an option file and its ``--force_yml`` overrides: YAML and the standard library only.

This is the part of option handling that runs before anything heavy is imported, so that a
missing file, a YAML syntax error or a bad override is reported at once (the checks that need
BasicSR's registries and the data live in :mod:`basicsr_ext.common.options`). The options read
here are the ones BasicSR runs with: ``basicsr train`` / ``test`` hand them over as parsed
(:mod:`basicsr_ext.patches.pipeline`), the file is not read a second time.
"""
import ast
import os
import re
from copy import deepcopy

import yaml


class OptionError(ValueError):
    """A problem with an option file, described in one line that names the file and key."""


#: libyaml's loader where PyYAML was built with it (several times faster), else the pure-Python one.
_Loader = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)


def read_options(path):
    """Read an option file into a dict (in file order), or raise OptionError saying why it cannot be read."""
    if os.path.isdir(path):
        raise OptionError(f'{path}: a folder, not an option file')
    if not os.path.isfile(path):
        raise OptionError(f'{path}: option file not found')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' (line {mark.line + 1})' if mark else ''
        raise OptionError(f'{path}: not valid YAML{where}: {getattr(e, "problem", e)}') from None
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f'{path}: cannot read option file: {e}') from None
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: expected a mapping of options, found {type(opt).__name__}')
    return opt


_INT = re.compile(r'[+-]?\d+')
_FLOAT = re.compile(r'[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)', re.I)


def parse_yml_value(value):
    """A ``--force_yml`` value as BasicSR reads it (``~``, booleans, numbers, lists, else a string),
    without ``eval``: lists are Python / YAML literals only; ValueError for a list that is not one."""
    if value == '~' or value.lower() == 'none':
        return None
    if value.lower() in ('true', 'false'):
        return value.lower() == 'true'
    if value.startswith('!!float'):
        return float(value[len('!!float'):])
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    if value.startswith('['):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = None
        if not isinstance(parsed, list):
            raise ValueError(f'{value!r} is not a list of plain values')
        return parsed
    return value


def _kind(value):
    """The type an overridden option must keep: booleans, numbers and lists (None: anything goes)."""
    if isinstance(value, bool):
        return 'true or false'
    if isinstance(value, (int, float)):
        return 'a number'
    if isinstance(value, list):
        return 'a list'
    return None


def apply_force_yml(opt, entries, path):
    """Apply ``--force_yml key:sub=value`` entries the way BasicSR does, without its bare KeyError."""
    opt = deepcopy(opt)
    for entry in entries or ():
        if '=' not in entry:
            raise OptionError(f'{path}: --force_yml {entry!r} is not of the form key:subkey=value')
        if entry.count('=') > 1:  # BasicSR splits the entry at every '='
            raise OptionError(f"{path}: --force_yml {entry!r}: a value cannot contain '='")
        keys, value = (s.strip() for s in entry.split('=', 1))
        *parents, last = keys.split(':')
        node = opt
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise OptionError(f'{path}: --force_yml {entry!r}: no option {keys!r} to override')
        try:
            new = parse_yml_value(value)
        except ValueError as e:
            raise OptionError(f'{path}: --force_yml {entry!r}: {e}') from None
        expected = _kind(node[last])
        auto = last == 'num_worker_per_gpu' and new == 'auto'  # a number of workers, or auto
        if expected and new is not None and not auto and _kind(new) != expected:
            raise OptionError(f'{path}: --force_yml {entry!r}: {keys} is {expected} in the file, '
                              f'got {value!r}')
        node[last] = new
    return opt


def read_with_overrides(path, force_yml=None):
    """The options of ``path`` with the ``--force_yml`` entries applied."""
    return apply_force_yml(read_options(path), force_yml, path)

"""``basicsr test`` on whichever benchmark sets are prepared (applied to the options as they are read).

The test option files list the five standard sets; a user who prepared only Set5 and Set14
should get their figures, not an error about B100. A test set whose ``dataroot_gt`` or
``dataroot_lq`` does not exist is skipped with one line; the run fails only when none is there.
"""
import os
import sys


def missing_sets(datasets):
    """{phase name: the first of its data folders that does not exist} for the test phases of ``datasets``."""
    missing = {}
    for key, dataset in (datasets or {}).items():
        if not isinstance(dataset, dict):
            continue
        for root in ('dataroot_gt', 'dataroot_lq'):
            value = dataset.get(root)
            if value is not None and not os.path.exists(os.path.expanduser(str(value))):
                missing[key] = str(value)
                break
    return missing


def drop_missing(opt, path, error, stream=None):
    """Drop the test sets whose folders are missing, saying so on one line each; ``error(message)``
    is raised when no set is left."""
    datasets = opt.get('datasets') or {}
    missing = missing_sets(datasets)
    if missing and len(missing) == len(datasets):
        names = ', '.join(str(datasets[k].get('name', k)) for k in missing)
        raise error(f'{path}: none of the test sets is prepared ({names}): e.g. datasets.{next(iter(missing))}: '
                    f'path {next(iter(missing.values()))} does not exist (basicsr prepare benchmark --input ...)')
    for key, folder in missing.items():
        print(f'basicsr test: skipping {datasets[key].get("name", key)} (datasets.{key}): {folder} does not exist',
              file=stream or sys.stderr)
        del datasets[key]
    return opt

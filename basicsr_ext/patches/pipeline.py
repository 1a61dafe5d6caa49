"""How one ``basicsr train`` / ``basicsr test`` run is handed to BasicSR's own pipeline.

BasicSR's ``train_pipeline`` and ``test_pipeline`` parse ``sys.argv`` and read the option file
themselves. The ``basicsr`` command has already read, overridden and checked the options
(:mod:`basicsr_ext.common.options`), so :func:`handed_over` gives the pipeline those options
as they are, finished the way BasicSR's ``parse_options`` finishes them (:func:`finish_options`):
the file is read once, and what was checked is what runs.

:func:`patch_quiet_terminal`, registered in :mod:`basicsr_ext.patches.compat`, keeps BasicSR's
banner and its dump of every option out of the terminal (they still go to the log file).
"""
import contextlib
import logging
import os
import random
from copy import deepcopy
from types import SimpleNamespace


class LogFileOnly(str):
    """A log message for the run's log file, not the terminal (see :class:`FileOnlyFilter`)."""


def _marked_file_only(record):
    return isinstance(record.msg, LogFileOnly)


class FileOnlyFilter(logging.Filter):
    """On a logger: hands the records ``file_only`` picks (default: :class:`LogFileOnly` messages)
    to the logger's file handlers alone."""

    def __init__(self, logger, file_only=_marked_file_only):
        super().__init__()
        self.logger = logger
        self.file_only = file_only

    def filter(self, record):
        if not self.file_only(record):
            return True
        for handler in self.logger.handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)
        return False


def log_to_file_only(logger, text):
    """Log ``text`` at INFO to the log file of ``logger`` only."""
    logger.info(LogFileOnly(text))


def patch_quiet_terminal():
    """BasicSR logs its banner and every option to the terminal: 129 of the 198 lines of a short run."""
    import basicsr.test
    import basicsr.train
    logger = logging.getLogger('basicsr')
    if any(isinstance(f, FileOnlyFilter) for f in logger.filters):
        return False
    logger.addFilter(FileOnlyFilter(logger))
    for module in (basicsr.train, basicsr.test):
        for name in ('get_env_info', 'dict2str'):
            upstream = getattr(module, name)
            setattr(module, name, lambda *args, _upstream=upstream, **kwargs: LogFileOnly(_upstream(*args, **kwargs)))
    return True


def finish_options(opt, launcher='none', auto_resume=False, debug=False, is_train=True, root_path='.'):
    """The options as BasicSR's ``parse_options`` completes what it reads from the file.

    Distributed set-up (``init_dist`` for a launcher), the seed, ``num_gpu: auto``, each data set's
    phase and scale, user paths expanded, the experiment or results folders. One difference from
    upstream: the seed is set after the ``--force_yml`` overrides (upstream seeds first, so
    ``--force_yml manual_seed=N`` changed the logged value and nothing else).
    """
    import torch
    from basicsr.utils import set_random_seed
    from basicsr.utils.dist_util import get_dist_info, init_dist

    opt = deepcopy(opt)
    opt['dist'] = launcher != 'none'
    if opt['dist']:
        init_dist(launcher, **(opt.get('dist_params') or {}) if launcher == 'slurm' else {})
    opt['rank'], opt['world_size'] = get_dist_info()
    if opt.get('manual_seed') is None:
        opt['manual_seed'] = random.randint(1, 10000)
    set_random_seed(opt['manual_seed'] + opt['rank'])
    opt['auto_resume'], opt['is_train'] = auto_resume, is_train
    if debug and not opt['name'].startswith('debug'):
        opt['name'] = f'debug_{opt["name"]}'
    if opt.get('num_gpu', 'auto') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    for phase, dataset in opt['datasets'].items():
        dataset['phase'] = phase.split('_')[0]  # val_1, val_2: phase val
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset.get(key) is not None:
                dataset[key] = os.path.expanduser(dataset[key])
    paths = opt.setdefault('path', {})
    for key, value in paths.items():
        if value is not None and ('resume_state' in key or 'pretrain_network' in key):
            paths[key] = os.path.expanduser(value)
    if is_train:
        root = paths['experiments_root'] = os.path.join(root_path, 'experiments', opt['name'])
        paths.update(models=os.path.join(root, 'models'), training_states=os.path.join(root, 'training_states'),
                     log=root, visualization=os.path.join(root, 'visualization'))
        if 'debug' in opt['name']:
            if 'val' in opt:
                opt['val']['val_freq'] = 8
            opt['logger']['print_freq'] = 1
            opt['logger']['save_checkpoint_freq'] = 8
    else:
        root = paths['results_root'] = os.path.join(root_path, 'results', opt['name'])
        paths.update(log=root, visualization=os.path.join(root, 'visualization'))
    return opt


@contextlib.contextmanager
def terminal_quiet_below_warning(keep=()):
    """While the block runs, the 'basicsr' logger's INFO records (the network, the data sets, each
    ``print_freq`` line) go to the run's log file only; warnings, errors and the records whose
    message starts with one of ``keep`` still reach the terminal."""
    logger = logging.getLogger('basicsr')
    quiet = FileOnlyFilter(logger, lambda record: record.levelno < logging.WARNING
                           and not str(record.msg).startswith(tuple(keep)))
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def fresh_logger():
    """BasicSR's ``get_root_logger`` sets up the 'basicsr' logger, and the run's log file, only on its
    first call in a process; forget earlier set-ups so that this run gets its own log file."""
    from basicsr.utils import logger as basicsr_logger
    logger = logging.getLogger('basicsr')
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    basicsr_logger.initialized_logger.pop('basicsr', None)


@contextlib.contextmanager
def handed_over(opt, opt_file, launcher='none', auto_resume=False, debug=False, is_train=True):
    """While the block runs, BasicSR's pipeline takes ``opt`` (read from ``opt_file`` and checked)
    instead of parsing the command line and reading the file again."""
    import basicsr.test
    import basicsr.train
    module = basicsr.train if is_train else basicsr.test
    upstream = module.parse_options
    args = SimpleNamespace(opt=opt_file, launcher=launcher, auto_resume=auto_resume, debug=debug)

    def parse_options(root_path, is_train=is_train):
        return finish_options(opt, launcher, auto_resume, debug, is_train, root_path), args

    fresh_logger()
    module.parse_options = parse_options
    try:
        yield
    finally:
        module.parse_options = upstream

"""The ``basicsr`` command.

``basicsr train`` and ``basicsr test`` take the arguments of BasicSR's own
``basicsr/train.py`` and ``basicsr/test.py`` and run BasicSR's own ``train_pipeline`` /
``test_pipeline`` with ASID registered and the compatibility patches applied. Experiments
and results land under the current directory, as when running BasicSR from its checkout.
"""
import argparse
import os
import shlex
import sys

# The commands' modules define their arguments with light imports (no torch, no BasicSR), so that
# `basicsr --help`, a misspelt option file or a YAML error answer at once; each imports what it
# runs with when it runs.
from basicsr_ext.commands import benchmark, export, infer, prepare
from basicsr_ext.commands.checkpoint_args import attach_value_ranges
from basicsr_ext.common.errors import CommandError
from basicsr_ext.common.files import shown
from basicsr_ext.common.interrupts import Interrupted, raising_on_signals
from basicsr_ext.common.optionfile import OptionError, read_with_overrides


def _add_pipeline_arguments(parser, train=True):
    # The arguments of BasicSR's own basicsr/train.py and basicsr/test.py (basicsr.utils.options.parse_options;
    # BasicSR's test takes --auto_resume and --debug too, unused: accepted, not shown)
    parser.add_argument('-opt', required=True, metavar='FILE', help='path to the option YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true',
                        help='resume from the latest training state' if train else argparse.SUPPRESS)
    parser.add_argument('--debug', action='store_true',
                        help='debug mode: frequent logs, validation, checkpoints' if train else argparse.SUPPRESS)
    # BasicSR's own scripts take --local_rank (torch.distributed.launch's spelling before torch 2.0)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    example = ('train:total_iter=1000 datasets:train:batch_size_per_gpu=8' if train else
               'path:pretrain_network_g=net_g.pth val:tile=64')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY=VALUE',
                        help=f'override options, e.g. {example}')


def _rank(launcher):
    """This process's rank, from the variables the launcher sets (BasicSR reads the same ones)."""
    variable = {'pytorch': 'RANK', 'slurm': 'SLURM_PROCID'}.get(launcher)
    return int(os.environ.get(variable, 0)) if variable else 0


def keep_compile_cache_with_the_runs():
    """Point torch.compile's caches (Inductor, Triton) at ``experiments/compile_cache``.

    A resumed run then starts from the code compiled by its first start, also where /tmp is
    wiped between jobs or the job moves to another node. One folder for all runs rather than one
    each: BasicSR moves a run's folder aside (``*_archived_*``) when it starts it afresh, which
    would take the cache with it, and runs of the same shapes share kernels (the cache is keyed by
    content). A TORCHINDUCTOR_CACHE_DIR of the user's wins; importing torch already set the
    variable to torch's default, which does not count.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    if os.environ.get('TORCHINDUCTOR_CACHE_DIR', default_cache_dir()) == default_cache_dir():
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = os.path.join(os.getcwd(), 'experiments', 'compile_cache')


def _run_pipeline(args, is_train):
    try:
        opt = read_with_overrides(args.opt, args.force_yml)  # before anything heavy is imported
    except OptionError as e:
        raise CommandError(str(e)) from None
    import asid_arch  # noqa: F401  (registers ASID and ASID_D8)
    from basicsr_ext.common.options import check_read_options, option_warnings
    from basicsr_ext.patches.pipeline import handed_over
    from basicsr_ext.common.checkpoints import RunError
    from basicsr_ext.common.datacheck import DataError
    from basicsr_ext.common.resources import NoRoomError
    from basicsr_ext.patches.runs import TrainingStopped, shut_down_loader_workers
    from basicsr_ext.training import data, models  # noqa: F401  (register InMemoryPairedImageDataset, ASIDModel)
    try:
        # Every rank checks the options; only rank 0 reads the data sets' files (the launcher
        # stops the other ranks when rank 0 exits with an error). `basicsr test` skips the sets
        # that are not prepared, one line each.
        opt = check_read_options(opt, args.opt, is_train=is_train, check_data=_rank(args.launcher) == 0,
                                 launcher=args.launcher, auto_resume=args.auto_resume)
    except OptionError as e:
        raise CommandError(str(e)) from None
    if is_train and _rank(args.launcher) == 0:
        for line in option_warnings(opt, args.opt):
            print(f'basicsr {args.command}: warning: {line}', file=sys.stderr, flush=True)
    if is_train:
        keep_compile_cache_with_the_runs()
        from basicsr.train import train_pipeline as pipeline
    else:
        from basicsr.test import test_pipeline as pipeline
    try:
        with handed_over(opt, args.opt, launcher=args.launcher, auto_resume=args.auto_resume, debug=args.debug,
                         is_train=is_train):
            pipeline(os.getcwd())
    except (RunError, DataError, NoRoomError) as e:
        # a failed save, nothing to resume from, an unusable checkpoint, an image that does not
        # decode (also in a loader worker), decoded images that would not fit: one line
        print(f'basicsr {args.command}: error: {_message(e)}', file=sys.stderr)
        return 1
    except TrainingStopped as e:  # a signal during training: saved (basicsr_ext/patches/runs.py)
        if _rank(args.launcher) == 0:
            print(f'basicsr train: {e.name}: stopped after iteration {e.iteration}, saved {shown(e.state_path)}; '
                  f'to continue: {resume_command(args)}', file=sys.stderr, flush=True)
        return e.code
    finally:
        shut_down_loader_workers()  # also while an error propagates: the workers must not outlive the run
    return 0


def resume_command(args):
    """The command that continues a stopped run: this one, with ``--auto_resume``."""
    if args.launcher != 'none':
        return 'the same launch command with --auto_resume'
    words = ['basicsr', 'train', '-opt', args.opt] + (['--debug'] if args.debug else [])
    if args.force_yml:
        words += ['--force_yml', *args.force_yml]
    return ' '.join(shlex.quote(w) for w in words + ['--auto_resume'])


def _message(error):
    """The one line of a RunError, also of one raised in a DataLoader worker (which the loader
    raises again with the worker's whole traceback as the message: its last line is the error)."""
    text = str(error).strip()
    if 'Original Traceback' in text:
        last = text.splitlines()[-1]
        text = last.split(': ', 1)[1] if ': ' in last else last
    return text


def cmd_train(args):
    return _run_pipeline(args, is_train=True)


def cmd_test(args):
    return _run_pipeline(args, is_train=False)


def _version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('asid-basicsr')
    except PackageNotFoundError:  # run from a checkout that is not installed
        return 'not installed'


def build_parser():
    parser = argparse.ArgumentParser(
        prog='basicsr', description='BasicSR with ASID registered: train, test and use super-resolution networks.')
    # torch.distributed.launch puts --local-rank=N before the command (python -m basicsr_ext --local-rank=0 train ...)
    parser.add_argument('--local_rank', '--local-rank', dest='launch_local_rank', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--version', action='version', version=f'%(prog)s (asid-basicsr {_version()})')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    train = commands.add_parser('train', help='train with an option file (BasicSR train_pipeline)')
    _add_pipeline_arguments(train)
    train.set_defaults(func=cmd_train)

    test = commands.add_parser('test', help='test with an option file (BasicSR test_pipeline)')
    _add_pipeline_arguments(test, train=False)
    test.set_defaults(func=cmd_test)

    prepare.add_parser(commands)
    infer.add_parser(commands)
    export.add_parser(commands)
    benchmark.add_parser(commands, train_command=lambda argv: main(['train', *argv]))
    return parser


def main(argv=None):
    args = build_parser().parse_args(attach_value_ranges(sys.argv[1:] if argv is None else argv))
    try:
        with raising_on_signals():  # SIGINT / SIGTERM: one line (training saves first: patches/runs.py)
            return args.func(args)
    except CommandError as e:
        print(f'basicsr {args.command}: error: {e}', file=sys.stderr)
        return 2
    except Interrupted as e:
        done = f'; {e.summary}' if e.summary else ''
        print(f'basicsr {args.command}: stopped by {e.name}{done}', file=sys.stderr, flush=True)
        return e.status


if __name__ == '__main__':
    sys.exit(main())

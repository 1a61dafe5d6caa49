"""Training runs that own their experiment and stop cleanly on SIGTERM / SIGINT.

Patches of BasicSR 1.4.2's ``basicsr.train`` in the style of :mod:`basicsr_ext.patches.compat`
(registered in ``compat.PATCHES``), so that every ``model_type`` gets them, BasicSR's own
SRModel as well as ASIDModel. ``train_pipeline`` is upstream code with no hook of its own; it
calls its helpers through ``basicsr.train``'s module globals, and those are what is wrapped:

* ``load_resume_state``, the first thing after the options are parsed: before it, rank 0 takes
  the experiment's lock (:class:`ExperimentLock`), so before ``make_exp_dirs`` could move the
  folder of a live run aside, and removes what killed saves left in the folder
  (:func:`basicsr_ext.common.files.remove_temporaries`). (Not ``parse_options``: ``basicsr
  train`` hands its checked options over in its place, :mod:`basicsr_ext.patches.pipeline`.)
* ``build_model``: the model's ``optimize_parameters`` is followed by :meth:`StopOnSignal.check`.
  That is the one point of the loop where an iteration is complete (learning rate stepped,
  weights updated) and the next has not begun, so a state saved there is exactly the one the
  loop's own ``save_checkpoint_freq`` would save at that iteration. The model is then shown to
  the watchers of :func:`models_built` (the timing of ``basicsr benchmark --train``).
* ``create_train_val_dataloader``: its sampler tells the epoch to save with the state.
* ``make_exp_dirs``, ``copy_opt_file``, ``get_root_logger`` (the log file): with the lock, what
  first writes into the experiment's folder: an OSError there (a read-only or full file system, no
  permission) is one line naming the folder (:func:`writing`), not a traceback.
* ``train_pipeline``: the lock is released and the signal handlers restored when it ends.

``test_pipeline`` (:func:`patch_test_lock`) takes the same kind of lock on its results folder,
``results/.<name>.lock``, before ``make_exp_dirs`` could move a live test's folder aside, and
releases it when it ends; an OSError there or in the log file is one line, as for training.
Rank 0 alone takes either lock; under DDP the other ranks learn whether it was refused and leave
with it (:func:`rank_zero_may_refuse`).

A signal sets a flag (:class:`StopOnSignal`); the iteration under way finishes; the networks and
the training state are saved under its number (atomically, as every save); the run exits with
128 + the signal's number (:class:`TrainingStopped`). Further signals are ignored, so nothing cuts
the save short. SIGINT and SIGTERM are blocked in the main thread while training (a helper thread
receives them for Python's handler): DataLoader workers, forked or spawned, inherit the block and
keep serving until the main process stops them, instead of dying under the same Ctrl-C or slurm
signal and failing the iteration under way.

Under DDP the ranks agree on the stop: after every iteration they all-reduce (max) the signal
number over a gloo group, so all ranks stop after the same iteration even when only one was
signalled, and rank 0 writes the one state. Every iteration, because a stop checked only every
``print_freq`` iterations could come after slurm's grace period (30 s by default); gloo, because
it is a CPU all-reduce of one number that never waits for the GPU (NCCL would need a
device-to-host copy, a stream sync, every iteration). ``torchrun --nproc_per_node=2 -m basicsr_ext
benchmark --stop-check`` measures it: figures in docs/long-runs.md, against BasicSR's pace of
tens of milliseconds an iteration.
"""
import contextlib
import datetime
import fcntl
import functools
import os
import re
import signal
import socket
import sys
import threading
import weakref

from basicsr_ext.common.errors import CommandError
from basicsr_ext.common.files import pid_alive, remove_temporaries, shown
from basicsr_ext.common.interrupts import SIGNALS


class ExperimentInUse(CommandError):
    """Another live process trains an experiment, or tests, under the same name (exit status 2)."""


class TrainingStopped(SystemExit):
    """Training stopped by a signal after saving; exits with 128 + the signal's number.

    A SystemExit, so that BasicSR's own ``basicsr/train.py`` exits with that status too;
    ``basicsr train`` catches it to say how to resume.
    """

    def __init__(self, signum, iteration, state_path):
        super().__init__(128 + signum)
        self.signum, self.iteration, self.state_path = signum, iteration, state_path

    @property
    def name(self):
        return signal.Signals(self.signum).name


# ----------------------------------------------------------------------------------------
# the lock
# ----------------------------------------------------------------------------------------
def lock_path(opt):
    """``experiments/.<name>.lock`` (a test: ``results/.<name>.lock``): beside the run's folder, which
    BasicSR may move aside."""
    root = opt['path']['experiments_root' if opt['is_train'] else 'results_root']
    return os.path.join(os.path.dirname(root), f'.{os.path.basename(root)}.lock')


class ExperimentLock:
    """An exclusive ``flock`` on a file holding the owner's pid, host and start time.

    The kernel drops the lock when its process dies, however it dies, so the lock of a killed
    run is simply taken over; a lock still held after its owner died (by the forked DataLoader
    workers of a run killed with SIGKILL, which share the descriptor until they exit) is replaced
    by a new file. Where the file system has no ``flock``, the pid decides: a lock of this host
    whose process is gone is taken over.
    """

    def __init__(self, path, name, what=None):
        self.path, self.name, self.fd = path, name, None
        self.what = what or f'experiment {name!r}'  # as the refusal names it

    def _refuse(self, holder):
        raise ExperimentInUse(f'{self.what} is in use by {holder or "another process"} '
                              f'({self.path}); wait for that run to end or choose another name')

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors='replace').strip()
                os.close(fd)
                if not holder or self._held_by_live_process(holder, count_self=True):  # (no pid: just taken)
                    self._refuse(holder)
                # the owner is dead and its forked loader workers, which share its descriptor, keep
                # the lock until they notice: a lock of nobody's; a new file is locked in its place
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            except OSError:  # no flock here (some network file systems): the pid decides
                holder = os.read(fd, 200).decode(errors='replace').strip()
                if self._held_by_live_process(holder):
                    os.close(fd)
                    self._refuse(holder)
            try:  # the file locked may have been removed by its owner's release meanwhile
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = datetime.datetime.now().isoformat(timespec='seconds')
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()} since {started}\n'.encode(), 0)
        except OSError:  # a full disk: not held, then
            os.close(fd)
            raise
        self.fd = fd
        return self

    @staticmethod
    def _held_by_live_process(holder, count_self=False):
        match = re.match(r'pid (\d+) on (\S+)', holder)
        if not match:
            return False
        if match.group(2) != socket.gethostname():
            return True  # cannot tell: another host's process is taken to be alive
        pid = int(match.group(1))
        return pid_alive(pid) if pid != os.getpid() else count_self

    def release(self):
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                os.remove(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def writing(folder):
    """The block makes or claims the run's ``folder``: an OSError there (a read-only or full file
    system, no permission) is a CommandError naming the folder, not a traceback."""
    try:
        yield
    except OSError as e:
        reason = f'[Errno {e.errno}] {e.strerror}' if e.errno else str(e) or type(e).__name__
        raise CommandError(f'cannot write {shown(folder)}: {reason}') from None


def _writes_into(folder_of, function):
    """``function`` within :func:`writing` the folder ``folder_of`` finds in its arguments."""
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with writing(folder_of(*args, **kwargs)):
            return function(*args, **kwargs)
    return wrapped


@contextlib.contextmanager
def rank_zero_may_refuse(opt):
    """A block in which rank 0 may refuse the run (the lock is held by another run, the folder cannot
    be written). Under DDP every rank learns rank 0's outcome there: the others leave with status 2
    when it failed (rank 0 says why), instead of going on to wait for it in the first collective
    (NCCL) or fail there with a traceback (gloo)."""
    failure = None
    try:
        yield
    except Exception as e:  # noqa: B902  (told to the other ranks, then raised again)
        failure = e
    if opt.get('dist') and opt.get('world_size', 1) > 1:
        import torch.distributed as dist
        told = [None if failure is None else str(failure)]
        dist.broadcast_object_list(told, src=0)
        if told[0] is not None and failure is None:
            raise SystemExit(2)
    if failure is not None:
        raise failure


def _copy_opt_file(upstream):
    """BasicSR's ``copy_opt_file(opt_file, experiments_root)``, for option files inside the run's folder:
    resuming from the run's own copy copies nothing (shutil refused to copy a file onto itself, and a
    second header would be added); one that a new run moved aside with its folder is named."""
    @functools.wraps(upstream)
    def copy_opt_file(opt_file, root):
        copy = os.path.join(root, os.path.basename(opt_file))
        if os.path.exists(opt_file) and os.path.exists(copy) and os.path.samefile(opt_file, copy):
            return None
        if not os.path.exists(opt_file):
            raise CommandError(f'{shown(opt_file)} was inside {shown(root)}, which this new run moved aside '
                               f'("Path already exists. Rename it to ..." above): start from a copy outside '
                               f'{shown(os.path.dirname(root))}/, or add --auto_resume to continue that run')
        with writing(root):
            return upstream(opt_file, root)
    return copy_opt_file


def _log_folder(logger_name='basicsr', log_level=None, log_file=None):  # get_root_logger's arguments
    return os.path.dirname(log_file) if log_file else '.'


#: Names of training states and checkpoints as safety.save_atomically wrote their temporaries
#: before basicsr_ext.common.files existed (``5000.state.tmp1234``).
_OLD_TEMPORARY = re.compile(r'(\d+\.state|net_\w+\.pth)\.tmp(\d+)')


def remove_killed_saves(experiments_root):
    """Remove the temporaries of saves that were killed in ``experiments_root``; the paths removed."""
    removed = remove_temporaries(experiments_root, recursive=True)
    for sub in ('models', 'training_states'):
        folder = os.path.join(experiments_root, sub)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            match = _OLD_TEMPORARY.fullmatch(name)
            if match and not pid_alive(int(match.group(2))):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    return removed


# ----------------------------------------------------------------------------------------
# stopping on a signal
# ----------------------------------------------------------------------------------------
class StopOnSignal:
    """SIGINT / SIGTERM during the training loop: noted, acted on after the iteration under way."""

    def __init__(self):
        self.signum = None  # the first signal received
        self.ignored = 0  # signals after the first
        self.previous = None
        self.receiver = self.done = None
        self.sampler = None  # the training sampler: its epoch goes into the state
        self.group = None  # the process group the ranks agree over

    def _note(self, signum, frame):  # (no printing here: the main thread may be inside a print)
        if self.signum is None:
            self.signum = signum
        else:
            self.ignored += 1

    def install(self, opt):
        """Note the signals from now on, in the main thread; under DDP, make the group to agree over
        (every rank calls this at the same point: BasicSR builds the model on every rank)."""
        self.join_ranks(opt)
        if threading.current_thread() is not threading.main_thread() or self.previous is not None:
            return
        self.previous = {s: signal.signal(s, self._note) for s in SIGNALS}
        # a thread that leaves the signals unblocked receives them, made before the main thread blocks them
        self.done = threading.Event()
        self.receiver = threading.Thread(target=self.done.wait, name='basicsr-signal-receiver', daemon=True)
        self.receiver.start()
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def join_ranks(self, opt):
        """Under DDP, the group the ranks agree over: gloo's default group, or a gloo group beside NCCL."""
        if opt.get('dist'):
            import torch.distributed as dist
            self.group = None if dist.get_backend() == 'gloo' else dist.new_group(backend='gloo')

    def restore(self):
        """Undo :meth:`install`. A signal noted after the last iteration (during the final save and
        validation) is not acted on: the run has ended as it would have."""
        if self.previous is None:
            return
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self.done.set()
        self.receiver.join()
        self.previous = None

    def agreed(self, opt):
        """The signal to stop on, the same on every rank (the largest number noted by any); 0 for none."""
        signum = self.signum or 0
        if not opt.get('dist'):
            return signum
        import torch
        import torch.distributed as dist
        flag = torch.tensor([signum], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag.item())

    def check(self, model, current_iter):
        """After the iteration ``current_iter``: save and raise TrainingStopped if a signal came."""
        signum = self.agreed(model.opt)
        if signum:
            self.stop(model, current_iter, signum)

    def stop(self, model, current_iter, signum):
        from basicsr.utils import get_root_logger
        from basicsr_ext.common.checkpoints import RunError
        opt = model.opt
        name = signal.Signals(signum).name
        logger = get_root_logger()
        logger.info(f'{name}: saving the models and the training state of iteration {current_iter}, then '
                    f'stopping (further signals are ignored until the save ends)')
        epoch = self.sampler.epoch if self.sampler is not None else 0
        error = None
        try:
            model.save(epoch, current_iter)
        except RunError as e:  # rank 0's; the other ranks must still hear of it below
            error = e
        if opt.get('dist'):  # the ranks leave together, after rank 0's save
            import torch
            import torch.distributed as dist
            ok = torch.tensor([0 if error else 1], dtype=torch.int32)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=self.group)
            if error is None and not ok.item():
                error = RunError(f'{name}: rank 0 could not save the state of iteration {current_iter}')
        if error is not None:
            raise error
        state = os.path.join(opt['path']['training_states'], f'{current_iter}.state')
        logger.info(f'{name}: saved {state}; stopped after iteration {current_iter}')
        raise TrainingStopped(signum, current_iter, state)


def shut_down_loader_workers():
    """Stop the DataLoader workers still running when a pipeline has ended.

    The workers start while :class:`StopOnSignal` blocks SIGINT and SIGTERM and inherit the block
    (so that a signal to the whole process group, as a cluster sends, leaves them working until the
    save). After an error raised in a worker, a reference cycle through its traceback kept BasicSR's
    prefetcher, and so the loader's iterator, alive past the interpreter's exit handler, whose
    SIGTERM to the workers they did not take: the run hung after printing its error. The
    iterator's own shutdown (its done event, then a join) needs no signal."""
    import gc
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
    for obj in gc.get_objects():
        if type(obj) is _MultiProcessingDataLoaderIter:  # (isinstance would touch deprecated torch objects)
            obj._shutdown_workers()


#: The run in this process: its lock, its signal handling (training), whether it is a test.
RUN = {'lock': None, 'stop': None, 'testing': False}
#: Callables shown each model that ``train_pipeline`` builds in this process (:func:`models_built`).
MODEL_WATCHERS = []


@contextlib.contextmanager
def models_built(watch):
    """Within the block, ``watch(model)`` is called with each model that BasicSR's ``train_pipeline``
    builds in this process (its stop check attached), before training starts: a measurement
    (``basicsr benchmark --train``) wraps that instance's methods there, and BasicSR's classes and
    functions stay as they are. Afterwards ``watch`` is no longer called."""
    MODEL_WATCHERS.append(watch)
    try:
        yield
    finally:
        MODEL_WATCHERS.remove(watch)


def patch_train_lock_and_signals():
    """BasicSR's ``train_pipeline`` saves nothing on SIGTERM / SIGINT and moves a live run's folder aside."""
    import basicsr.train as train
    if getattr(train.train_pipeline, '_stops_on_signals', False):
        return False
    upstream = {name: getattr(train, name) for name in
                ('load_resume_state', 'build_model', 'create_train_val_dataloader', 'train_pipeline')}

    @functools.wraps(upstream['load_resume_state'])
    def load_resume_state(opt):
        if RUN['stop'] is not None:  # in a train_pipeline
            with rank_zero_may_refuse(opt):
                if opt['rank'] == 0:
                    with writing(opt['path']['experiments_root']):
                        RUN['lock'] = ExperimentLock(lock_path(opt), opt['name']).acquire()
                        removed = remove_killed_saves(opt['path']['experiments_root'])
                    for path in removed:
                        print(f'basicsr train: removed {path}, left by a save that was killed', file=sys.stderr)
        return upstream['load_resume_state'](opt)

    @functools.wraps(upstream['create_train_val_dataloader'])
    def create_train_val_dataloader(opt, logger):
        result = upstream['create_train_val_dataloader'](opt, logger)
        RUN['stop'].sampler = result[1]
        return result

    @functools.wraps(upstream['build_model'])
    def build_model(opt):
        model = upstream['build_model'](opt)
        optimize_parameters = model.optimize_parameters.__func__  # the model's own, unbound
        stop, this = RUN['stop'], weakref.ref(model)  # (no cycle: the model goes when the run ends)

        def optimize_then_check(current_iter):
            optimize_parameters(this(), current_iter)
            stop.check(this(), current_iter)

        model.optimize_parameters = optimize_then_check
        for watch in MODEL_WATCHERS:
            watch(model)
        stop.install(opt)  # before the loop starts the loader workers: they inherit the blocked signals
        return model

    @functools.wraps(upstream['train_pipeline'])
    def train_pipeline(root_path):
        RUN['stop'] = StopOnSignal()
        try:
            return upstream['train_pipeline'](root_path)
        finally:
            RUN['stop'].restore()
            RUN['stop'].sampler = None  # it holds the data set (and its open LMDBs): not beyond the run
            RUN['stop'] = None
            _release_lock()

    train_pipeline._stops_on_signals = True
    train.load_resume_state = load_resume_state
    train.make_exp_dirs = _writes_into(lambda opt: opt['path']['experiments_root'], train.make_exp_dirs)
    train.copy_opt_file = _copy_opt_file(train.copy_opt_file)
    train.get_root_logger = _writes_into(_log_folder, train.get_root_logger)
    train.create_train_val_dataloader = create_train_val_dataloader
    train.build_model = build_model
    train.train_pipeline = train_pipeline
    return True


def _release_lock():
    if RUN['lock'] is not None:
        RUN['lock'].release()
        RUN['lock'] = None


def patch_test_lock():
    """BasicSR's ``test_pipeline``, started with the name of a live test, moves that test's results
    folder aside: the live test's later files land in the new run's folder, mixed with its own."""
    import basicsr.test as test
    if getattr(test.test_pipeline, '_locks_results', False):
        return False
    upstream = {name: getattr(test, name) for name in ('make_exp_dirs', 'test_pipeline')}

    @functools.wraps(upstream['make_exp_dirs'])
    def make_exp_dirs(opt):  # the first thing after the options are parsed
        root = opt['path']['results_root']
        with rank_zero_may_refuse(opt), writing(root):
            if RUN['testing'] and opt['rank'] == 0:
                RUN['lock'] = ExperimentLock(lock_path(opt), opt['name'], f'results folder {shown(root)}').acquire()
            return upstream['make_exp_dirs'](opt)

    @functools.wraps(upstream['test_pipeline'])
    def test_pipeline(root_path):
        RUN['testing'] = True
        try:
            return upstream['test_pipeline'](root_path)
        finally:
            RUN['testing'] = False
            _release_lock()

    test_pipeline._locks_results = True
    test.make_exp_dirs = make_exp_dirs
    test.get_root_logger = _writes_into(_log_folder, test.get_root_logger)
    test.test_pipeline = test_pipeline
    return True

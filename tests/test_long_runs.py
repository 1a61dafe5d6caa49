"""Runs that survive their cluster: a signal saves the run, a run owns its experiment, killed saves
leave nothing for good (docs/long-runs.md; that eager DDP of ASID ends cleanly is checked in test_cli.py)."""
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest
import torch

from basicsr_ext.common import files
from basicsr_ext.patches.runs import ExperimentInUse, ExperimentLock
from conftest import cpu_ranks_env, free_port, tiny_options, write_options

#: ASID small enough for a CPU test: 14,606 parameters.
TINY_ASID = {'type': 'ASID', 'upscale': 4, 'num_groups': 1, 'num_feat': 8}


def basicsr(*args):
    return [sys.executable, '-m', 'basicsr_ext', *args]


class Running:
    """A ``basicsr`` command started in the background; its stderr read line by line."""

    def __init__(self, command, cwd, env=None, timeout=240, stdin=None):
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines = []
        self.watchdog = threading.Timer(timeout, self.kill)  # a hung run fails the test instead of hanging it
        self.watchdog.start()

    def kill(self):
        os.killpg(self.process.pid, signal.SIGKILL)

    def wait_for(self, pattern):
        """Read stderr until a line matches ``pattern``; the match (None if the process ended first)."""
        for line in self.process.stderr:
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        return None

    def finish(self):
        """The exit status, once the process has ended; the rest of stderr is in ``lines``."""
        self.lines += self.process.stderr.readlines()
        status = self.process.wait()
        self.watchdog.cancel()
        self.process.stderr.close()
        return status

    @property
    def stderr(self):
        return ''.join(self.lines)


ITERATION = r'\[epoch:\s*\d+, iter:\s*([\d,]+),'


def signal_options(tiny_data, name, total_iter=1000, workers=1, model_type='ASIDModel'):
    opt = tiny_options(tiny_data, name=name, network=dict(TINY_ASID), total_iter=total_iter,
                       checkpoint_freq=10000, val_freq=10000)
    opt['model_type'] = model_type
    opt['datasets']['train'].update(num_worker_per_gpu=workers, dataset_enlarge_ratio=50)
    return opt


# ----------------------------------------------------------------------------------------
# 1: a signal during training saves the iteration under way
# ----------------------------------------------------------------------------------------
def iterations_logged(run):
    return [int(m.group(1)) for m in re.finditer(ITERATION, run.stderr)]


def test_signal_during_training_saves_that_iteration_and_auto_resume_continues_from_it(tmp_path, tiny_data):
    # As slurm preempts (SIGTERM to every process of the job) and Ctrl-C interrupts (SIGINT to the
    # terminal's process group): the loader worker gets the signal too, and must keep serving.
    opt_file = write_options(tmp_path / 'sig.yml', signal_options(tiny_data, 'sig'))
    states = tmp_path / 'experiments/sig/training_states'
    first = Running(basicsr('train', '-opt', opt_file), cwd=tmp_path)
    assert first.wait_for(ITERATION) and first.wait_for(ITERATION), first.stderr[-3000:]  # the worker serves
    os.killpg(first.process.pid, signal.SIGTERM)  # the whole group: the run and its loader worker
    assert first.finish() == 143, first.stderr[-3000:]
    stopped = re.search(r'basicsr train: SIGTERM: stopped after iteration (\d+), saved (\S+\.state); to continue: '
                        rf'basicsr train -opt {re.escape(opt_file)} --auto_resume\n', first.stderr)
    assert stopped and 'Traceback' not in first.stderr, first.stderr[-3000:]
    saved = int(stopped.group(1))
    assert saved >= max(iterations_logged(first))  # the iteration under way was finished
    assert torch.load(tmp_path / stopped.group(2), weights_only=True)['iter'] == saved
    assert (tmp_path / f'experiments/sig/models/net_g_{saved}.pth').is_file()
    assert os.listdir(states) == [f'{saved}.state']  # no temporary

    # a save killed with SIGKILL leaves its temporary: the next start removes it
    killed_save = states / f'.{saved + 5}.state.asid-tmp-{dead_pid()}'
    killed_save.write_bytes(b'\0' * 100)
    second = Running(basicsr('train', '-opt', opt_file, '--auto_resume'), cwd=tmp_path)
    assert second.wait_for(ITERATION), second.stderr[-3000:]
    os.killpg(second.process.pid, signal.SIGINT)  # Ctrl-C
    assert second.finish() == 130, second.stderr[-3000:]
    assert f'basicsr train: removed {killed_save}, left by a save that was killed' in second.stderr
    assert not killed_save.exists()
    assert f'Resuming training from epoch: 0, iter: {saved}.' in second.stderr
    assert min(iterations_logged(second)) == saved + 1
    again = re.search(r'basicsr train: SIGINT: stopped after iteration (\d+)', second.stderr)
    assert again and 'Traceback' not in second.stderr, second.stderr[-3000:]
    assert sorted(os.listdir(states)) == sorted([f'{saved}.state', f'{again.group(1)}.state'])
    assert not glob.glob(str(tmp_path / 'experiments/sig_archived_*'))  # nothing moved aside


def test_signal_before_training_starts_is_one_line_and_saves_nothing(tmp_path, tiny_data, monkeypatch, capsys):
    import basicsr.train

    from basicsr_ext.commands.cli import main
    opt_file = write_options(tmp_path / 'early.yml', tiny_options(tiny_data, name='early'))
    build_model = basicsr.train.build_model

    def signalled_while_building(opt):  # e.g. while a large data set is being listed
        os.kill(os.getpid(), signal.SIGTERM)
        return build_model(opt)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', sys.argv[:])
    monkeypatch.setattr(basicsr.train, 'build_model', signalled_while_building)
    assert main(['train', '-opt', opt_file]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == 'basicsr train: stopped by SIGTERM'
    assert not os.listdir(tmp_path / 'experiments/early/training_states')
    assert not (tmp_path / 'experiments/.early.lock').exists()


def rank_pid(launcher_pid, rank):
    """The pid of the process of ``rank`` that torchrun (``launcher_pid``) started."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/stat') as f:
                parent = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{pid}/environ', 'rb') as f:
                environ = f.read().split(b'\0')
        except OSError:
            continue
        if parent == launcher_pid and f'RANK={rank}'.encode() in environ:
            return int(pid)
    raise AssertionError(f'no rank {rank} under {launcher_pid}')


def test_signal_to_one_ddp_rank_stops_every_rank_after_the_same_iteration_with_one_state(tmp_path, tiny_data):
    # Spawned loader workers (BasicSR sets 'spawn' under DDP) and a signal to rank 1 alone: rank 0,
    # never signalled, stops after the same iteration and writes the state.
    opt = signal_options(tiny_data, 'ddps', model_type='SRModel')
    opt['datasets']['train']['persistent_workers'] = True
    env = cpu_ranks_env()
    run = Running([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
                   '-m', 'basicsr_ext', 'train', '-opt', write_options(tmp_path / 'ddps.yml', opt), '--launcher',
                   'pytorch'], cwd=tmp_path, env=env)
    assert run.wait_for(ITERATION) and run.wait_for(ITERATION), run.stderr[-3000:]
    os.kill(rank_pid(run.process.pid, 1), signal.SIGTERM)
    run.finish()
    stopped = re.findall(r'basicsr train: SIGTERM: stopped after iteration (\d+), saved (\S+); to continue: the same '
                         r'launch command with --auto_resume', run.stderr)
    assert len(stopped) == 1, run.stderr[-3000:]  # said by rank 0 only
    iteration = int(stopped[0][0])
    assert os.listdir(tmp_path / 'experiments/ddps/training_states') == [f'{iteration}.state']
    assert os.listdir(tmp_path / 'experiments/ddps/models') == [f'net_g_{iteration}.pth']
    assert torch.load(tmp_path / stopped[0][1], weights_only=True)['iter'] == iteration
    assert 'exited unexpectedly' not in run.stderr  # the loader workers were not killed
    # torchrun's report of its workers: each exited with 128 + SIGTERM, or, when the other left first,
    # was ended by torchrun's own SIGTERM on its way out (after the save: the ranks leave after it)
    codes = re.findall(r'exitcode\s*: (-?\d+) ', run.stderr)
    assert len(codes) == 2 and '143' in codes and set(codes) <= {'143', '-15'}, run.stderr[-3000:]


# ----------------------------------------------------------------------------------------
# 2: one live run per experiment name
# ----------------------------------------------------------------------------------------
LOADER_WITH_A_BAD_IMAGE = """
import signal, sys
import torch
from torch.utils.data import DataLoader, Dataset


class OneBadImage(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3:
            raise ValueError('a damaged image')
        return torch.zeros(1)


signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # as StopOnSignal.install does
it = iter(DataLoader(OneBadImage(), batch_size=1, num_workers=2))
it.cycle = it  # alive past the exit handler, as a traceback's reference cycle kept BasicSR's prefetcher
try:
    for _ in it:
        pass
except ValueError:
    print('error met', flush=True)
if sys.argv[1:] == ['shut-down']:  # what basicsr train does when its pipeline ends
    from basicsr_ext.patches.runs import shut_down_loader_workers
    shut_down_loader_workers()
"""


@pytest.mark.parametrize('shut_down', [True, False], ids=['as basicsr train ends', 'without (hangs)'])
def test_loader_workers_that_block_signals_are_shut_down_when_a_run_ends_with_an_error(tmp_path, shut_down):
    # the workers inherit the run's blocked SIGTERM: the exit handler's terminate() could not end them
    script = tmp_path / 'loader.py'
    script.write_text(LOADER_WITH_A_BAD_IMAGE)
    command = [sys.executable, str(script)] + (['shut-down'] if shut_down else [])
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30 if shut_down else 8)
    except subprocess.TimeoutExpired as e:  # killed with SIGKILL, its workers reaped with it
        assert not shut_down, 'the run hung after its error'
        assert 'error met' in (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or '')
        return
    assert shut_down, 'without the shut-down the run no longer hangs: is the test still showing the fault?'
    assert result.returncode == 0 and 'error met' in result.stdout, result.stderr


def test_second_run_of_a_live_experiment_refuses_in_one_line_and_leaves_its_folder_alone(tmp_path, tiny_data):
    opt_file = write_options(tmp_path / 'own.yml', signal_options(tiny_data, 'own', workers=0))
    first = Running(basicsr('train', '-opt', opt_file), cwd=tmp_path)
    try:
        assert first.wait_for(ITERATION) is not None, first.stderr[-3000:]
        second = subprocess.run(basicsr('train', '-opt', opt_file), cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        line = f'basicsr train: error: experiment \'own\' is in use by pid {first.process.pid} on ' \
               f'{socket.gethostname()} since '
        assert second.stderr.startswith(line), second.stderr[-3000:]
        assert len(second.stderr.splitlines()) == 1
        assert not glob.glob(str(tmp_path / 'experiments/own_archived_*'))  # the live run's folder stays
        assert first.process.poll() is None
    finally:
        first.kill()  # SIGKILL: the lock file stays, naming a process that is gone
        first.finish()
    assert (tmp_path / 'experiments/.own.lock').exists()

    third = subprocess.run(basicsr('train', '-opt', opt_file, '--force_yml', 'train:total_iter=1'), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr[-3000:]  # the lock of the killed run is taken over
    assert not (tmp_path / 'experiments/.own.lock').exists()  # and released at the end


#: ``basicsr test ARGS`` that stops, once its results folder is made, until its stdin has a line (or ends).
PAUSED_TEST = """
import sys
import basicsr.test
from basicsr_ext.commands.cli import main

build_model = basicsr.test.build_model


def paused(opt):
    print('paused', file=sys.stderr, flush=True)
    sys.stdin.readline()
    return build_model(opt)


basicsr.test.build_model = paused
sys.exit(main(sys.argv[1:]))
"""


def test_second_test_run_of_one_name_refuses_in_one_line_and_leaves_the_live_results_folder_alone(
        tmp_path, tiny_data, monkeypatch, capsys):
    # BasicSR's test_pipeline moved the live run's results/<name> aside and both wrote results
    from basicsr_ext.commands.cli import main
    opt = tiny_options(tiny_data, name='tested')
    del opt['datasets']['train'], opt['train']
    opt_file = write_options(tmp_path / 'test.yml', opt)
    script = tmp_path / 'paused_test.py'
    script.write_text(PAUSED_TEST)
    results = tmp_path / 'results'
    first = Running([sys.executable, str(script), 'test', '-opt', opt_file], cwd=tmp_path, stdin=subprocess.PIPE)
    try:
        assert first.wait_for('^paused$'), first.stderr[-3000:]
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, 'argv', sys.argv[:])
        second = main(['test', '-opt', opt_file])
        during = sorted(os.listdir(results))
    finally:
        first.process.stdin.close()  # the first run goes on
        first_status = first.finish()
    err = capsys.readouterr().err
    assert second == 2, err
    assert err.startswith(f'basicsr test: error: results folder results/tested is in use by pid {first.process.pid} '
                          f'on {socket.gethostname()} since '), err
    assert len(err.splitlines()) == 1
    assert during == ['.tested.lock', 'tested']  # no tested_archived_*
    assert first_status == 0, first.stderr[-3000:]
    assert os.listdir(results) == ['tested']  # the lock released at the end
    assert len(glob.glob(str(results / 'tested' / 'test_tested_*.log'))) == 1  # the first run's alone


@pytest.mark.parametrize('command', ['train', 'test'])
def test_under_ddp_every_rank_leaves_in_one_line_when_rank_zero_finds_the_name_in_use(command, tmp_path, tiny_data):
    # only rank 0 takes the lock; the others went on into DDP and failed there (gloo: a traceback) or
    # waited for rank 0 for ever (NCCL). Two ranks started by hand, as srun starts them.
    opt = tiny_options(tiny_data, name='busy')
    if command == 'test':
        del opt['datasets']['train'], opt['train']
    opt_file = write_options(tmp_path / 'busy.yml', opt)
    folder = tmp_path / ('experiments' if command == 'train' else 'results')
    held = ExperimentLock(str(folder / '.busy.lock'), 'busy').acquire()  # a live run of that name: this test
    env = dict(os.environ, WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()))
    try:
        ranks = [subprocess.Popen([sys.executable, '-m', 'basicsr_ext', command, '-opt', opt_file, '--launcher',
                                   'pytorch'], cwd=tmp_path, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        results = [rank.communicate(timeout=120) for rank in ranks]
    finally:
        held.release()
    (_, err0), (_, err1) = results
    assert [rank.returncode for rank in ranks] == [2, 2], (err0[-2000:], err1[-2000:])
    assert err0.splitlines()[-1].startswith(f'basicsr {command}: error: ') and 'in use by pid' in err0, err0
    assert 'Traceback' not in err0 + err1 and 'error' not in err1, err1[-2000:]
    assert os.listdir(folder) == []  # nothing made, nothing moved aside


def test_lock_is_exclusive_until_released_and_names_its_holder(tmp_path):
    path = str(tmp_path / 'experiments' / '.x.lock')
    held = ExperimentLock(path, 'x').acquire()
    with pytest.raises(ExperimentInUse, match=rf"experiment 'x' is in use by pid {os.getpid()} on "):
        # another open file description: as another process would see it
        ExperimentLock(path, 'x').acquire()
    held.release()
    assert not os.path.exists(path)
    ExperimentLock(path, 'x').acquire().release()


# ----------------------------------------------------------------------------------------
# 5: eager DDP of ASID validates at the last iteration and ends: checked by the DDP runs of
# tests/test_cli.py (test_two_process_ddp_run_with_spawned_loader_workers_trains_validates_and_saves_once)
# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# 9: temporaries of killed writes
# ----------------------------------------------------------------------------------------
def dead_pid():
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, '-c', ''])
    child.wait()
    return child.pid


def test_write_file_leaves_the_old_file_or_the_new_one_and_no_temporary(tmp_path):
    path = tmp_path / 'a.bin'
    files.write_file(str(path), b'old')

    def fail(f):
        f.write(b'half')
        raise OSError(28, 'No space left on device')

    with pytest.raises(OSError, match=re.escape(f"No space left on device: '{path}'")):
        files.write_file(str(path), write=fail)
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['a.bin']


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # the swallowed one, reported
def test_a_signal_whose_exception_python_swallowed_still_stops_the_command_before_it_keeps_a_file(tmp_path):
    # Raised inside a __del__ or a weakref callback (importlib's module locks have one), the
    # Interrupted of a Ctrl-C is printed as "Exception ignored" and lost; export once wrote its file
    # and exited 0 after such a Ctrl-C.
    from basicsr_ext.common.interrupts import Interrupted, raising_on_signals

    class SignalledWhileFinalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the handler runs here, inside __del__: its exception is swallowed

    path = tmp_path / 'a.bin'
    with pytest.raises(Interrupted) as stopped, raising_on_signals():
        SignalledWhileFinalised()  # collected at once
        files.write_file(str(path), b'new')
    assert stopped.value.signum == signal.SIGINT
    assert os.listdir(tmp_path) == []
    with pytest.raises(Interrupted), raising_on_signals():  # with nothing written, at the end of the block
        SignalledWhileFinalised()
    with raising_on_signals():  # and not again in the next block
        files.write_file(str(path), b'new')
    assert path.read_bytes() == b'new'
    with pytest.raises(Interrupted) as stopped, raising_on_signals():
        SignalledWhileFinalised()
        os.kill(os.getpid(), signal.SIGTERM)  # after a lost one, the next signal stops at once
        sum(range(1000))
        pytest.fail('the second signal did not stop the block')
    assert stopped.value.signum == signal.SIGTERM
    with pytest.raises(ValueError), raising_on_signals():  # a block left by another error
        SignalledWhileFinalised()
        raise ValueError
    files.write_file(str(path), b'after')  # leaves no lost signal behind for the code after it
    assert path.read_bytes() == b'after'


def test_temporaries_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    pid = dead_pid()
    ours_dead = tmp_path / f'.x.png.asid-tmp-{pid}'
    ours_live = tmp_path / f'.y.png.asid-tmp-{os.getppid()}'
    users = [tmp_path / f'.x.png.tmp{pid}', tmp_path / 'x.asid-tmp-1', tmp_path / f'.x.png.asid-tmp-{pid}.bak']
    for path in [ours_dead, ours_live, *users]:
        path.write_bytes(b'')
    assert files.remove_temporaries(str(tmp_path)) == [str(ours_dead)]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [ours_live, *users])


def test_ctrl_c_in_basicsr_test_is_one_line(tmp_path, tiny_data, monkeypatch, capsys):
    import basicsr.test

    from basicsr_ext.commands.cli import main
    opt = tiny_options(tiny_data, name='tested')
    del opt['datasets']['train'], opt['train']
    opt_file = write_options(tmp_path / 'test.yml', opt)
    build_model = basicsr.test.build_model

    def interrupted_while_testing(opt):
        model = build_model(opt)
        validation = model.validation

        def validate(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
            return validation(*args, **kwargs)

        model.validation = validate
        return model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', sys.argv[:])
    monkeypatch.setattr(basicsr.test, 'build_model', interrupted_while_testing)
    assert main(['test', '-opt', opt_file]) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == 'basicsr test: stopped by SIGINT' and 'Traceback' not in err

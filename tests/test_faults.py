"""Faults and bad input in ``basicsr train`` / ``test``: full disks, broken or hostile files,
bad option values. Each is one line and a non-zero exit; nothing half-written is left."""
import builtins
import errno
import glob
import os
import re
import resource
import signal
import subprocess
import sys
import zipfile

import pytest
import torch

from asid_arch import ASID
from basicsr_ext.commands.cli import main
from conftest import tiny_options, write_options

#: A tiny ASID, for option files that train or test the network itself.
TINY_ASID = {'type': 'ASID', 'upscale': 4, 'num_groups': 1, 'num_feat': 8, 'value_range': [-1, 1]}


def basicsr_on_a_full_disk(*args, cwd, file_size_limit):
    """``python -m basicsr_ext ARGS`` in a fresh interpreter that cannot write more than ``file_size_limit``
    bytes to any file (RLIMIT_FSIZE: writes beyond fail with EFBIG, as on a full disk; no root needed)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, '-m', 'basicsr_ext', *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)


def error_lines(result):
    """stderr lines of a run that are not BasicSR's own console logging."""
    return [line for line in result.stderr.splitlines() if line.startswith('basicsr')]


def train_file(tmp_path, tiny_data, name='run', **kw):
    return write_options(tmp_path / f'{name}.yml', tiny_options(tiny_data, name=name, **kw))


def options_for_test(tmp_path, tiny_data, checkpoint, network=None, name='tested', **path):
    opt = tiny_options(tiny_data, name=name, network=network or dict(TINY_ASID))
    del opt['datasets']['train'], opt['train']
    opt['path'].update(pretrain_network_g=str(checkpoint), **path)
    return write_options(tmp_path / f'{name}.yml', opt)


class RunsAShellCommand:
    """What a hostile checkpoint holds: unpickling it would run ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


# ----------------------------------------------------------------------------------------
# saving: full disk
# ----------------------------------------------------------------------------------------
def test_full_disk_stops_the_run_with_one_line_leaves_no_partial_file_and_warns_once_about_the_log(
        tmp_path, tiny_data, monkeypatch):
    opt_file = train_file(tmp_path, tiny_data, total_iter=6, checkpoint_freq=5, val_freq=100)
    # 4 KB: the checkpoint does not fit, nor does the log (BasicSR's option dump alone is larger)
    full = basicsr_on_a_full_disk('train', '-opt', opt_file, cwd=tmp_path, file_size_limit=4 * 1024)
    assert full.returncode == 1, full.stderr[-2000:]
    lines = error_lines(full)
    assert len(lines) == 2, lines
    assert 'cannot write the log file' in lines[0] and 'experiments/run/train_run_' in lines[0]
    assert lines[1].startswith('basicsr train: error: cannot save ')
    assert lines[1].endswith('experiments/run/models/net_g_5.pth: File too large'), lines
    assert 'Just ignore it' not in full.stderr and 'Traceback' not in full.stderr
    assert 'Logging error' not in full.stderr
    assert len(full.stderr.splitlines()) < 250  # BasicSR's console log, ~150 lines (logging errors added ~1,500)
    run = tmp_path / 'experiments' / 'run'
    assert os.listdir(run / 'models') == [] and os.listdir(run / 'training_states') == []  # no temporary files

    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', opt_file, '--auto_resume']) == 0  # room again: nothing to resume, starts afresh
    assert (run / 'models' / 'net_g_latest.pth').is_file()


# ----------------------------------------------------------------------------------------
# starting: an experiments or results folder that cannot be written
# ----------------------------------------------------------------------------------------
#: Flags of ``os.open`` that write.
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: How a folder is made unwritable (:func:`unwritable`).
UNWRITABLE = ['chmod 555', 'EROFS', 'ENOSPC']


@pytest.fixture
def unwritable(request, monkeypatch):
    """``unwritable(folder, how)``: nothing under ``folder`` can be written from now on; returns the OS
    error expected. 'chmod 555' for real (skipped as root, whom it does not stop); 'EROFS' and
    'ENOSPC' as a read-only or full file system gives them, by the os functions that BasicSR and the
    lock write with failing under ``folder`` (os.open, os.mkdir, os.rename, os.remove, open)."""
    def make(folder, how):
        folder = os.path.abspath(folder)
        if how == 'chmod 555':
            os.chmod(folder, 0o555)
            request.addfinalizer(lambda: os.chmod(folder, 0o755))
            try:
                open(os.path.join(folder, 'probe'), 'w').close()
            except PermissionError:
                return f'[Errno {errno.EACCES}] {os.strerror(errno.EACCES)}'
            pytest.skip('chmod does not stop this user (root) from writing')
        code = getattr(errno, how)

        def refuse(*paths):
            for path in map(os.path.abspath, map(os.fsdecode, paths)):
                if path == folder or path.startswith(folder + os.sep):
                    raise OSError(code, os.strerror(code), path)

        def wrap(module, name, writes=lambda *args, **kwargs: True):
            real = getattr(module, name)

            def refusing(*args, **kwargs):
                if writes(*args, **kwargs):
                    refuse(*args[:2] if name == 'rename' else args[:1])
                return real(*args, **kwargs)

            monkeypatch.setattr(module, name, refusing)

        wrap(os, 'open', lambda path, flags, *args, **kwargs: flags & WRITING)
        wrap(builtins, 'open', lambda file, mode='r', *args, **kwargs: not isinstance(file, int)
             and any(c in mode for c in 'wax+'))
        for name in ('mkdir', 'rename', 'remove'):
            wrap(os, name)
        return f'[Errno {code}] {os.strerror(code)}'

    return make


@pytest.mark.parametrize('how', UNWRITABLE)
@pytest.mark.parametrize('command', ['train', 'test'])
def test_unwritable_experiments_or_results_folder_is_one_line_naming_the_run_folder_and_the_os_error(
        command, how, unwritable, tmp_path, tiny_data, monkeypatch, capsys):
    # a traceback from the lock (os.open), as from BasicSR's make_exp_dirs before there was a lock
    opt = tiny_options(tiny_data, name='run')
    if command == 'test':
        del opt['datasets']['train'], opt['train']
    opt_file = write_options(tmp_path / 'run.yml', opt)
    folder = tmp_path / ('experiments' if command == 'train' else 'results')
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    error = unwritable(folder, how)
    assert main([command, '-opt', opt_file]) == 2
    line = f'basicsr {command}: error: cannot write {folder.name}/run: {error}'
    assert capsys.readouterr().err.splitlines() == [line]
    assert os.listdir(folder) == []


@pytest.mark.parametrize('how', UNWRITABLE)
def test_resuming_into_an_unwritable_experiment_folder_is_one_line_naming_it_and_the_os_error(how, trained,
                                                                                              unwritable, capsys):
    # a traceback from BasicSR's copy_opt_file, or (chmod: it overwrites the file) from the log file
    opt_file, run = trained
    for log in run.glob('train_run_*.log'):  # one named for the same second would be reopened, not created
        log.unlink()
    error = unwritable(run, how)
    capsys.readouterr()
    assert main(['train', '-opt', opt_file, '--auto_resume']) == 2
    assert capsys.readouterr().err.splitlines() == [f'basicsr train: error: cannot write experiments/run: {error}']
    assert not (run.parent / '.run.lock').exists()  # released


def test_full_disk_once_the_lock_is_taken_is_one_line_naming_the_experiment_folder(unwritable, tmp_path, tiny_data,
                                                                                   monkeypatch, capsys):
    # a killed run's lock file is rewritten in place; the experiment's new folder finds no room:
    # a traceback from BasicSR's make_exp_dirs
    opt_file = train_file(tmp_path, tiny_data)
    (tmp_path / 'experiments').mkdir()
    (tmp_path / 'experiments' / '.run.lock').touch()
    monkeypatch.chdir(tmp_path)
    error = unwritable(tmp_path / 'experiments' / 'run', 'ENOSPC')
    assert main(['train', '-opt', opt_file]) == 2
    assert capsys.readouterr().err.splitlines() == [f'basicsr train: error: cannot write experiments/run: {error}']


# ----------------------------------------------------------------------------------------
# resuming
# ----------------------------------------------------------------------------------------
@pytest.fixture
def trained(tmp_path, tiny_data, monkeypatch):
    """A finished run with training states 2 and 4 and its option file (total_iter 4)."""
    opt_file = train_file(tmp_path, tiny_data, total_iter=4, checkpoint_freq=2, val_freq=100)
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', opt_file]) == 0
    return opt_file, tmp_path / 'experiments' / 'run'


def test_resuming_from_the_runs_own_copy_of_the_option_file_copies_nothing(trained, capsys):
    # BasicSR's copy_opt_file copied it onto itself (shutil's SameFileError) after adding a header
    _, run = trained
    own = run / 'run.yml'
    text = own.read_text()
    assert text.startswith('# GENERATE TIME')
    assert main(['train', '-opt', str(own.relative_to(run.parent.parent)), '--auto_resume', '--force_yml',
                 'train:total_iter=5']) == 0
    assert own.read_text() == text
    assert re.search(r'iter:\s+5, lr:', capsys.readouterr().err)  # it trained on from the state


def test_a_new_run_from_the_option_file_inside_its_own_folder_names_where_it_went(trained, capsys):
    # without --auto_resume BasicSR moves experiments/run aside, the option file with it
    _, run = trained
    capsys.readouterr()
    assert main(['train', '-opt', 'experiments/run/run.yml']) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ('basicsr train: error: experiments/run/run.yml was inside experiments/run, which this new run '
                       'moved aside ("Path already exists. Rename it to ..." above): start from a copy outside '
                       'experiments/, or add --auto_resume to continue that run'), err
    archived = [p for p in os.listdir(run.parent) if p.startswith('run_archived_')]
    assert len(archived) == 1 and (run.parent / archived[0] / 'run.yml').exists()


def test_checkpoints_and_states_get_the_permissions_of_any_new_file(trained):
    umask = os.umask(0)
    os.umask(umask)
    _, run = trained
    for path in [*(run / 'models').iterdir(), *(run / 'training_states').iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


@pytest.mark.parametrize('damage', ['truncated', 'empty'])
def test_auto_resume_skips_a_broken_newest_state_with_one_line_and_resumes_from_the_one_before(damage, trained,
                                                                                                 capsys):
    opt_file, run = trained
    newest = run / 'training_states' / '4.state'
    newest.write_bytes(newest.read_bytes()[:len(newest.read_bytes()) // 2] if damage == 'truncated' else b'')
    capsys.readouterr()
    assert main(['train', '-opt', opt_file, '--auto_resume', '--force_yml', 'train:total_iter=6']) == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if 'skipped' in line]
    assert len(skipped) == 1 and 'experiments/run/training_states/4.state' in skipped[0], skipped
    log = open(sorted(glob.glob(str(run / 'train_run_*.log')))[-1]).read()
    assert 'iter: 2.' in log and 'End of training' in log


def test_auto_resume_refuses_in_one_line_when_no_state_loads(trained, capsys):
    opt_file, run = trained
    for state in (run / 'training_states').iterdir():
        state.write_bytes(b'')
    capsys.readouterr()
    assert main(['train', '-opt', opt_file, '--auto_resume']) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3, lines  # the two skipped, then the refusal
    assert lines[-1].startswith('basicsr train: error: --auto_resume: none of the 2 training states')


def test_resume_with_an_edited_schedule_or_lr_warns_once_per_setting_and_keeps_the_states(trained, capsys):
    # BasicSR's resume_training loads the saved schedulers and optimizers over the option file's: silently
    opt_file, run = trained  # milestones [2], gamma 0.5, lr 1e-3: 5e-4 from iteration 2 on
    capsys.readouterr()
    assert main(['train', '-opt', opt_file, '--auto_resume', '--force_yml', 'train:total_iter=5']) == 0
    assert 'WARNING' not in capsys.readouterr().err  # total_iter is not in the state
    assert main(['train', '-opt', opt_file, '--auto_resume', '--force_yml', 'train:total_iter=6',
                 'train:scheduler:milestones=[5]', 'train:scheduler:gamma=0.1', 'train:optim_g:lr=0.01']) == 0
    err = capsys.readouterr().err
    assert [line.split(' WARNING: ')[1] for line in err.splitlines() if ' WARNING: ' in line] == [
        "train.scheduler.milestones: the resumed state's [2] is used, not the option file's [5]",
        "train.scheduler.gamma: the resumed state's 0.5 is used, not the option file's 0.1",
        "train.optim_g.lr: the resumed state's 0.001 is used, not the option file's 0.01"]
    # as it says: the lr stays at 5e-4, not 0.01, nor 1e-3 (0.01 x 0.1) from iteration 5
    assert re.search(r'iter:\s+6, lr:\(5\.000e-04,\)', err), err[-2000:]


def test_resume_warns_of_edited_cosine_periods_which_the_states_override():
    from types import SimpleNamespace

    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR

    from basicsr_ext.patches.safety import settings_the_state_keeps
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3)
    saved = CosineAnnealingRestartLR(optimizer, periods=[10, 10], restart_weights=[1, 0.5], eta_min=1e-7)
    state = {'optimizers': [optimizer.state_dict()], 'schedulers': [saved.state_dict()]}
    options = {'optim_g': {'type': 'AdamW', 'lr': 1e-3},
               'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [20, 20], 'restart_weights': [1, 0.5],
                             'eta_min': 1e-7}}
    model = SimpleNamespace(opt={'train': options}, optimizer_g=optimizer, optimizers=[optimizer])
    assert settings_the_state_keeps(model, state) == [('train.scheduler.periods', [10, 10], [20, 20])]
    edited = CosineAnnealingRestartLR(optimizer, periods=[20, 20], restart_weights=[1, 0.5], eta_min=1e-7)
    edited.load_state_dict(state['schedulers'][0])  # what resume_training does
    assert edited.periods == [10, 10] and edited.cumulative_period == [10, 20]
    # a state of fewer optimizers than the model has: no comparison (BasicSR refuses such a state itself)
    second = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3)
    model.optimizer_d, model.optimizers, options['optim_d'] = second, [optimizer, second], {'lr': 1e-3}
    assert settings_the_state_keeps(model, state) == []


@pytest.fixture(scope='module')
def asid_run(tmp_path_factory):
    """A finished run of a tiny ASID in [-1, 1] (states 2 and 4), trained once for the tests below."""
    root = tmp_path_factory.mktemp('asid_run')
    from conftest import write_pairs
    write_pairs(str(root / 'data' / 'train'), 2)
    write_pairs(str(root / 'data' / 'val'), 1, start=10)
    opt_file = write_options(root / 'asid.yml', tiny_options(str(root / 'data'), name='asid', network=dict(TINY_ASID),
                                                             total_iter=4, checkpoint_freq=2, val_freq=100))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(['train', '-opt', opt_file]) == 0
    return root


RESUME_CHANGES = {
    'network_g:value_range=[0,1]': 'experiments/asid/models/net_g_4.pth was trained with value_range [-1, 1], '
                                   'network_g has [0, 1]',
    'network_g:num_groups=2': 'experiments/asid/models/net_g_4.pth has num_groups 1, network_g asks for 2',
    'network_g:type=ASID_D8': 'network_g.num_groups: 1, but ASID_D8 is the 8-group variant (leave num_groups out, '
                              'or use type: ASID for 1 groups)',
}


@pytest.mark.parametrize('how', ['--auto_resume', 'path.resume_state'])
@pytest.mark.parametrize('change', RESUME_CHANGES)
def test_resume_refuses_what_pretrain_refuses_in_one_line_and_touches_nothing(change, how, asid_run, tmp_path,
                                                                               capsys, monkeypatch):
    import shutil
    shutil.copytree(asid_run, tmp_path / 'run')
    monkeypatch.chdir(tmp_path / 'run')
    before = sorted(p for p in (tmp_path / 'run').rglob('*'))
    args = ['train', '-opt', 'asid.yml', '--force_yml', change, 'train:total_iter=6']
    args += ['--auto_resume'] if how == '--auto_resume' else ['path:resume_state=experiments/asid/training_states/4.state']
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    state = ' experiments/asid/training_states/4.state' if 'network_g.' not in RESUME_CHANGES[change] else ''
    where = f'{how}{state}: ' if state else ''
    assert err == f'basicsr train: error: asid.yml: {where}{RESUME_CHANGES[change]}', err
    assert sorted(p for p in (tmp_path / 'run').rglob('*')) == before


def test_resume_with_the_options_that_saved_it_continues(asid_run, tmp_path, monkeypatch):
    import shutil
    shutil.copytree(asid_run, tmp_path / 'run')
    monkeypatch.chdir(tmp_path / 'run')
    assert main(['train', '-opt', 'asid.yml', '--auto_resume', '--force_yml', 'train:total_iter=5']) == 0
    log = open(sorted(glob.glob(str(tmp_path / 'run' / 'experiments' / 'asid' / 'train_asid_*.log')))[-1]).read()
    assert 'Resuming training from epoch: 3, iter: 4.' in log and 'End of training' in log


def test_asid_d8_with_another_group_count_is_refused_in_one_line(tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    network = {**TINY_ASID, 'type': 'ASID_D8', 'num_groups': 3}
    assert main(['train', '-opt', write_options(tmp_path / 'd8.yml', tiny_options(tiny_data, network=network))]) == 2
    assert capsys.readouterr().err.strip() == (
        f'basicsr train: error: {tmp_path / "d8.yml"}: network_g.num_groups: 3, but ASID_D8 is the 8-group variant '
        f'(leave num_groups out, or use type: ASID for 3 groups)')
    assert not (tmp_path / 'experiments').exists()


# ----------------------------------------------------------------------------------------
# hostile files: the safe loader whatever the environment says
# ----------------------------------------------------------------------------------------
def test_test_refuses_a_code_carrying_checkpoint_even_with_torch_force_no_weights_only_load(
        tmp_path, tiny_data, capsys, monkeypatch):
    marker = tmp_path / 'it-ran'
    torch.save({'params': RunsAShellCommand(marker)}, tmp_path / 'evil.pth')
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')  # torch reads it at each load
    monkeypatch.chdir(tmp_path)
    assert main(['test', '-opt', options_for_test(tmp_path, tiny_data, tmp_path / 'evil.pth')]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'evil.pth: refused to load' in err, err


def test_auto_resume_refuses_a_code_carrying_net_g_beside_its_state_even_with_the_override(trained, capsys,
                                                                                            monkeypatch):
    opt_file, run = trained
    marker = run.parent.parent / 'it-ran'
    for it in (2, 4):
        torch.save({'params': RunsAShellCommand(marker)}, run / 'models' / f'net_g_{it}.pth')
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    capsys.readouterr()
    assert main(['train', '-opt', opt_file, '--auto_resume']) == 1
    assert not marker.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all('refused to load' in line for line in lines[:2]), lines


def test_force_yml_list_value_is_never_evaluated(tmp_path, tiny_data, capsys):
    marker = tmp_path / 'it-ran'
    opt_file = write_options(tmp_path / 'a.yml', tiny_options(tiny_data, network=dict(TINY_ASID)))
    value = f"[__import__('os').system('touch {marker}'),1][1:]+[1]"
    assert main(['train', '-opt', opt_file, '--force_yml', f'network_g:value_range={value}']) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'is not a list of plain values' in err


def test_force_yml_lists_and_negative_numbers_still_reach_basicsr(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt_file = write_options(tmp_path / 'a.yml', tiny_options(tiny_data, network=dict(TINY_ASID), total_iter=1))
    assert main(['train', '-opt', opt_file, '--force_yml', 'network_g:value_range=[0, 1]',
                 'train:warmup_iter=-1']) == 0
    log = open(glob.glob(str(tmp_path / 'experiments/tiny/train_tiny_*.log'))[0]).read()
    assert 'value_range: [0, 1]' in log and 'warmup_iter: -1' in log


# ----------------------------------------------------------------------------------------
# option values, checked before BasicSR starts
# ----------------------------------------------------------------------------------------
BAD_NETWORKS = {
    'upscale 5 with scale 4': ({'upscale': 5}, 'network_g.upscale: 5, but scale is 4'),
    'window_size 0': ({'window_size': 0}, 'window_size must be a positive integer, got 0'),
    'num_feat 50': ({'num_feat': 50}, 'num_feat must be a positive multiple of 4, got 50'),
    'value_range [0, 2]': ({'value_range': [0, 2]}, 'value_range'),
    'unknown key': ({'num_feats': 8}, 'network_g.num_feats: not an option of ASID'),
}


@pytest.mark.parametrize('case', BAD_NETWORKS)
def test_bad_network_g_value_is_one_line_before_basicsr_starts_and_leaves_no_experiment_folder(
        case, tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    change, words = BAD_NETWORKS[case]
    opt_file = write_options(tmp_path / 'n.yml', tiny_options(tiny_data, network={**TINY_ASID, **change}))
    assert main(['train', '-opt', opt_file]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'n.yml: network_g' in err and words in err, err
    assert not (tmp_path / 'experiments').exists()


BAD_OVERRIDES = {
    'train:total_iter=abc': "train:total_iter is a number in the file, got 'abc'",
    'datasets:train:batch_size_per_gpu=two': "datasets:train:batch_size_per_gpu is a number in the file",
    'name=run=1': "a value cannot contain '='",
    'train:total_iter=-5': 'train.total_iter: must be a positive integer, got -5',
}


@pytest.mark.parametrize('entry', BAD_OVERRIDES)
def test_bad_force_yml_value_is_one_line_and_trains_nothing(entry, tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', train_file(tmp_path, tiny_data), '--force_yml', entry]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and BAD_OVERRIDES[entry] in err, err
    assert not (tmp_path / 'experiments').exists()


# ----------------------------------------------------------------------------------------
# pretrained checkpoints that cannot be used
# ----------------------------------------------------------------------------------------
def _bad_checkpoint(kind, path):
    torch.manual_seed(0)
    good = {'params': ASID(upscale=4, num_groups=1, num_feat=8).state_dict()}
    torch.save(good, path)
    data = path.read_bytes()
    if kind == 'truncated':
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'another network':
        from basicsr.archs.srresnet_arch import MSRResNet
        torch.save({'params': MSRResNet(num_feat=8, num_block=1).state_dict()}, path)
    elif kind == 'a zip that is no checkpoint':
        with zipfile.ZipFile(path, 'w') as z:
            z.writestr('readme.txt', 'hello')
    elif kind == 'x2 in an x4 file':
        torch.save({'params': ASID(upscale=2, num_groups=1, num_feat=8).state_dict()}, path)
    elif kind == 'NaN weights':
        good['params']['output.weight'][0, 0, 0, 0] = float('nan')
        torch.save(good, path)
    return path


BAD_CHECKPOINTS = {
    'truncated': 'cannot read checkpoint (truncated or corrupt file?)',
    'empty': 'cannot read checkpoint',
    'another network': 'not an ASID state_dict',
    'a zip that is no checkpoint': 'ckpt.pth',
    'x2 in an x4 file': 'has upscale 2, network_g asks for 4',
    'NaN weights': 'output.weight holds NaN or infinite values',
}


@pytest.mark.parametrize('kind', BAD_CHECKPOINTS)
@pytest.mark.parametrize('command', ['test', 'train'])
def test_unusable_pretrained_checkpoint_is_one_line_naming_it(command, kind, tmp_path, tiny_data, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = _bad_checkpoint(kind, tmp_path / 'ckpt.pth')
    if command == 'test':
        opt_file = options_for_test(tmp_path, tiny_data, ckpt)
    else:
        opt = tiny_options(tiny_data, network=dict(TINY_ASID))
        opt['path']['pretrain_network_g'] = str(ckpt)
        opt_file = write_options(tmp_path / 'tested.yml', opt)
    assert main([command, '-opt', opt_file]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert 'tested.yml: path.pretrain_network_g' in err and str(ckpt) in err and BAD_CHECKPOINTS[kind] in err, err
    assert not (tmp_path / 'results').exists() and not (tmp_path / 'experiments').exists()


def test_pretrained_weights_of_another_network_size_name_what_does_not_load(tmp_path, tiny_data, capsys):
    # network_g is MSRResNet with 8 features and 1 block; the file holds 2 blocks of 16 features
    from basicsr.archs.srresnet_arch import MSRResNet
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'params': MSRResNet(num_feat=16, num_block=2).state_dict()}, ckpt)
    opt_file = options_for_test(tmp_path, tiny_data, ckpt, network=tiny_options(tiny_data)['network_g'])
    assert main(['test', '-opt', opt_file]) == 2
    err = capsys.readouterr().err.strip()
    # the one key and shape check (asid_arch.checkpoint.key_mismatch) after this command's own prefix
    assert err.endswith(f"tested.yml: path.pretrain_network_g: {ckpt} does not hold the weights of network_g "
                        f"(MSRResNet): unexpected 4: 'body.1.conv1.weight', 'body.1.conv1.bias', "
                        f"'body.1.conv2.weight', ... (1 more); wrong shape 13: 'conv_first.weight' is (16, 3, 3, 3) "
                        f"in the file, (8, 3, 3, 3) in the model, 'conv_first.bias' is (16,) in the file, (8,) in "
                        f"the model, 'body.0.conv1.weight' is (16, 16, 3, 3) in the file, (8, 8, 3, 3) in the model, "
                        f"... (10 more)"), err


# ----------------------------------------------------------------------------------------
# a checkpoint carries what it needs to be used
# ----------------------------------------------------------------------------------------
def test_checkpoint_moved_out_of_its_run_keeps_its_value_range_in_infer(tmp_path, tiny_data, capsys, monkeypatch):
    import cv2
    monkeypatch.chdir(tmp_path)
    opt_file = write_options(tmp_path / 'a.yml', tiny_options(tiny_data, name='vr', network=dict(TINY_ASID),
                                                              total_iter=1))
    assert main(['train', '-opt', opt_file]) == 0
    moved = tmp_path / 'elsewhere.pth'
    os.rename(tmp_path / 'experiments/vr/models/net_g_latest.pth', moved)
    cv2.imwrite(str(tmp_path / 'in.png'), cv2.imread(os.path.join(tiny_data, 'val/LR/0010.png')))
    capsys.readouterr()
    assert main(['infer', '-i', 'in.png', '-o', 'out', '--model-path', str(moved), '--device', 'cpu']) == 0
    model_line = capsys.readouterr().err.splitlines()[0]
    assert 'value range [-1, 1]' in model_line and 'assumed' not in model_line, model_line

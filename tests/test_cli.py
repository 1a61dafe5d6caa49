"""The ``basicsr`` command: BasicSR's train/test pipelines, clear errors, resume, and DDP."""
import glob
import os
import re
import subprocess
import sys

import pytest

from basicsr_ext.commands.cli import main
from basicsr_ext.common import options
from basicsr_ext.common.options import OptionError, check_read_options, load_and_check
from conftest import REPO, cpu_ranks_env, free_port, kill_after_iteration, run_basicsr, tiny_options, write_options


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf'^\s+{command}\s', out, re.M), out


COMMANDS = ('train', 'test', 'prepare', 'infer', 'benchmark')


@pytest.mark.parametrize('command', COMMANDS)
def test_help_of_each_command_exits_0_and_shows_its_usage(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, '--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f'usage: basicsr {command} '), out
    assert 'options:' in out or 'optional arguments:' in out, out


def test_train_runs_basicsr_pipeline_and_writes_experiments_under_the_current_directory(tmp_path, tiny_data,
                                                                                         monkeypatch):
    opt_file = write_options(tmp_path / 'tiny.yml', tiny_options(tiny_data, total_iter=4, checkpoint_freq=2))
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', opt_file]) == 0
    run_dir = tmp_path / 'experiments' / 'tiny'
    assert (run_dir / 'models' / 'net_g_latest.pth').is_file()
    assert (run_dir / 'training_states' / '4.state').is_file()
    assert 'End of training' in open(glob.glob(str(run_dir / 'train_tiny_*.log'))[0]).read()


def test_test_command_reports_psnr_under_results(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', write_options(tmp_path / 't.yml', tiny_options(tiny_data, total_iter=2))]) == 0
    opt = tiny_options(tiny_data, name='tiny_test')
    del opt['datasets']['train'], opt['train']
    opt['path']['pretrain_network_g'] = str(tmp_path / 'experiments/tiny/models/net_g_latest.pth')
    assert main(['test', '-opt', write_options(tmp_path / 'test.yml', opt)]) == 0
    log = open(glob.glob(str(tmp_path / 'results/tiny_test/test_tiny_test_*.log'))[0]).read()
    assert re.search(r'# psnr: \d+\.\d+', log)


def _broken_options(tmp_path, tiny_data):
    """Option files with one mistake each, and the words the one-line error must contain."""
    unknown_net = tiny_options(tiny_data)
    unknown_net['network_g']['type'] = 'NoSuchNet'
    missing_dir = tiny_options(tiny_data)
    missing_dir['datasets']['train']['dataroot_lq'] = str(tmp_path / 'nowhere')
    (tmp_path / 'malformed.yml').write_text('name: [unclosed\nmodel_type: SRModel\n')
    return {
        'missing file': (str(tmp_path / 'absent.yml'), ['absent.yml', 'not found']),
        'a folder': (str(tmp_path), [str(tmp_path), 'a folder, not an option file']),
        'malformed YAML': (str(tmp_path / 'malformed.yml'), ['malformed.yml', 'YAML', 'line']),
        'unknown network': (write_options(tmp_path / 'net.yml', unknown_net), ['net.yml', 'network_g.type',
                                                                              'NoSuchNet']),
        'missing dataset folder': (write_options(tmp_path / 'dir.yml', missing_dir),
                                   ['dir.yml', 'datasets.train.dataroot_lq', 'nowhere', 'does not exist']),
    }


@pytest.mark.parametrize('case', ['missing file', 'a folder', 'malformed YAML', 'unknown network',
                                  'missing dataset folder'])
def test_bad_option_file_gives_one_line_naming_file_and_key(case, tmp_path, tiny_data, capsys):
    opt_file, words = _broken_options(tmp_path, tiny_data)[case]
    assert main(['train', '-opt', opt_file]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err
    assert not (tmp_path / 'experiments').exists()


def test_force_yml_overrides_an_option_and_rejects_unknown_keys(tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt_file = write_options(tmp_path / 'tiny.yml', tiny_options(tiny_data, total_iter=50))
    assert main(['train', '-opt', opt_file, '--force_yml', 'train:total_iter=2', 'logger:save_checkpoint_freq=1']) == 0
    assert sorted(os.listdir(tmp_path / 'experiments/tiny/training_states')) == ['1.state', '2.state']
    assert main(['train', '-opt', opt_file, '--force_yml', 'train:total_iters=2']) == 2
    assert "no option 'train:total_iters'" in capsys.readouterr().err


def test_auto_resume_after_sigkill_continues_from_the_last_checkpoint(tmp_path, tiny_data):
    network = {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_block': 2, 'upscale': 4}
    total = 100  # killed at iteration 21 (below), so the first run never gets near the end
    opt = tiny_options(tiny_data, name='killed', network=network, total_iter=total, checkpoint_freq=20, val_freq=1000)
    opt['datasets']['train']['gt_size'] = 64
    command = [sys.executable, '-m', 'basicsr_ext', 'train', '-opt', write_options(tmp_path / 'k.yml', opt),
               '--auto_resume']
    states = tmp_path / 'experiments/killed/training_states'

    # Killed once the log shows an iteration after the first save (every 20): that save has
    # finished, and saves are atomic, so whatever the kill interrupts, the states under their
    # final names are complete. No sleeping, no polling: the log says when.
    kill_after_iteration(command, tmp_path, 20)
    saved = max(int(name.split('.')[0]) for name in os.listdir(states) if re.fullmatch(r'\d+\.state', name))
    assert 20 <= saved < total

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    logs = sorted(glob.glob(str(tmp_path / 'experiments/killed/train_killed_*.log')))
    resumed = open(logs[-1]).read()
    assert f'Resuming training from epoch: ' in resumed and f'iter: {saved}.' in resumed
    assert 'End of training' in resumed
    assert (states / f'{total}.state').is_file()


LAUNCHERS = {
    'torchrun': ['-m', 'torch.distributed.run'],
    # the deprecated launcher passes --local-rank=N on the command line
    'torch.distributed.launch': ['-W', 'ignore::FutureWarning', '-m', 'torch.distributed.launch'],
}


@pytest.mark.parametrize('launcher, dataset, model_type', [('torchrun', 'InMemoryPairedImageDataset', 'ASIDModel'),
                                                           ('torch.distributed.launch', 'PairedImageDataset', 'SRModel')])
def test_two_process_ddp_run_with_spawned_loader_workers_trains_validates_and_saves_once(launcher, dataset, model_type,
                                                                                        tmp_path, tiny_data):
    # As on GPUs: BasicSR's init_dist sets the 'spawn' start method, so each DataLoader worker is
    # a fresh interpreter that imports BasicSR without anything this package imported first (and,
    # with the in-memory type, receives the decoded images as a handle to shared memory).
    # The network is ASID, trained eagerly by BasicSR's SRModel and by ASIDModel: ASID has buffers
    # (relative position index), which DistributedDataParallel broadcasts in its forward, so rank 0
    # validating through the wrapper alone ran a collective the other rank never joined; the run
    # must validate at its last iteration and end (docs/long-runs.md, 'DDP: validation and stopping').
    network = {'type': 'ASID', 'upscale': 4, 'num_groups': 1, 'num_feat': 8}
    opt = tiny_options(tiny_data, name='ddp', network=network, total_iter=4, checkpoint_freq=2, val_freq=2)
    opt['model_type'] = model_type
    if model_type == 'ASIDModel':
        opt['train']['compile'] = False  # eager DDP (the compiled step under DDP: tests/test_train_step.py)
    in_memory = dataset == 'InMemoryPairedImageDataset'
    workers = 'auto' if in_memory else 1  # auto: 1 each on 2 to 5 cores
    # in memory: two epochs of 2 iterations, the spawned workers kept through them without being asked
    ratio = 2 if in_memory else 4
    opt['datasets']['train'].update(type=dataset, num_worker_per_gpu=workers, dataset_enlarge_ratio=ratio,
                                    **({} if in_memory else {'persistent_workers': True}))
    env = cpu_ranks_env()
    result = subprocess.run(
        [sys.executable, *LAUNCHERS[launcher], '--nproc_per_node=2', f'--master_port={free_port()}', '-m',
         'basicsr_ext', 'train', '-opt', write_options(tmp_path / 'ddp.yml', opt), '--launcher', 'pytorch'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = glob.glob(str(tmp_path / 'experiments/ddp/train_ddp_*.log'))
    assert len(logs) == 1  # only rank 0 writes the log
    log = open(logs[0]).read()
    assert 'World size (gpu number): 2' in log
    assert f'num_worker_per_gpu: {workers}' in log
    if dataset == 'InMemoryPairedImageDataset':
        assert re.search(r'InMemoryPairedImageDataset tiny_train: 4 pairs take [\d.]+ MB decoded per process '
                         r'\(HR .*\), 2 ranks on this host \(each decodes its own copy\): [\d.]+ MB; MemAvailable', log)
        assert re.search(r'num_worker_per_gpu: auto -> \d+ \(\d+ usable cores, 2 ranks on this host', log)
    # the total batch is 2 x 2: 16 samples (4 images x 4) make 4 iterations an epoch, 8 samples 2
    assert re.search(rf'Dataset enlarge ratio: {ratio}\n\s+Batch size per gpu: 2\n\s+World size \(gpu number\): 2\n'
                     rf'\s+Require iter number per epoch: {ratio}\n', log)
    assert ('persistent_workers: not set -> true (spawned loader workers are kept' in log) == in_memory
    # iterations 2 and 4, and after training (where ASIDModel reports iteration 4's figures instead
    # of validating the same weights again)
    assert len(re.findall(r'Validation tiny_val', log)) == (3 if model_type == 'SRModel' else 2)
    assert re.search(r'Validation tiny_val\s+# psnr: [\d.]+', log) and 'End of training' in log
    assert sorted(os.listdir(tmp_path / 'experiments/ddp/training_states')) == ['2.state', '4.state']
    assert sorted(os.listdir(tmp_path / 'experiments/ddp/models')) == ['net_g_2.pth', 'net_g_4.pth',
                                                                       'net_g_latest.pth']


def test_only_rank_zero_reads_the_data_files(tmp_path, tiny_data, monkeypatch):
    open(os.path.join(tiny_data, 'train/HR/0001.png'), 'wb').close()  # an empty file: a data error
    opt_file = write_options(tmp_path / 'bad.yml', tiny_options(tiny_data))
    checked = []
    monkeypatch.setattr(options, 'check_read_options', lambda *a, check_data, **k: checked.append(check_data)
                        or check_read_options(*a, check_data=False, **k))
    monkeypatch.setattr('basicsr.train.train_pipeline', lambda root: None)
    for rank in ('0', '1'):
        monkeypatch.setenv('RANK', rank)
        assert main(['train', '-opt', opt_file, '--launcher', 'pytorch']) == 0
    assert checked == [True, False]
    monkeypatch.undo()
    with pytest.raises(OptionError, match='0001.png'):
        load_and_check(opt_file, check_data=True)
    load_and_check(opt_file, check_data=False)  # the option checks alone pass


def test_train_keeps_torch_compile_caches_beside_the_experiments(tmp_path, tiny_data):
    # so that a resumed run starts from the kernels its first start compiled, on any node; in a
    # fresh interpreter, where importing torch has already set the variable to torch's default
    opt_file = write_options(tmp_path / 'tiny.yml', tiny_options(tiny_data))
    script = ('import os, sys, basicsr.train\n'
              'from basicsr_ext.commands.cli import main\n'
              'basicsr.train.train_pipeline = lambda root: print(os.environ["TORCHINDUCTOR_CACHE_DIR"])\n'
              'sys.exit(main(sys.argv[1:]))')
    command = [sys.executable, '-c', script, 'train', '-opt', opt_file]
    env = {k: v for k, v in os.environ.items() if k != 'TORCHINDUCTOR_CACHE_DIR'}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(tmp_path / 'experiments' / 'compile_cache')]

    env['TORCHINDUCTOR_CACHE_DIR'] = str(tmp_path / 'mine')  # the user's choice wins
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == [str(tmp_path / 'mine')], result.stderr[-2000:]


def test_console_script_runs_as_python_module(tmp_path):
    result = run_basicsr('--help', cwd=tmp_path)
    assert result.returncode == 0 and 'train' in result.stdout


def _first_loss(run_dir):
    log = open(glob.glob(os.path.join(run_dir, 'train_*.log'))[0]).read()
    return re.search(r'l_pix: ([0-9.e+-]+)', log).group(1)


def test_force_yml_manual_seed_seeds_the_run_two_seeds_train_differently_one_seed_twice_alike(
        tmp_path, tiny_data, monkeypatch):
    # BasicSR seeds before it applies --force_yml: every seed trained as the file's seed did
    monkeypatch.chdir(tmp_path)
    opt_file = write_options(tmp_path / 's.yml', tiny_options(tiny_data, total_iter=1, checkpoint_freq=1,
                                                               val_freq=1))
    losses = []
    for i, seed in enumerate((1, 2, 1)):
        assert main(['train', '-opt', opt_file, '--force_yml', f'manual_seed={seed}', f'name=seed_{i}']) == 0
        losses.append(_first_loss(tmp_path / 'experiments' / f'seed_{i}'))
    assert losses[0] == losses[2] != losses[1], losses


@pytest.mark.parametrize('argv', [['--help'], ['--version'], ['train', '--help'], ['test', '--help'],
                                  ['prepare', '--help'], ['infer', '--help'], ['export', '--help'],
                                  ['benchmark', '--help'],
                                  ['train', '-opt', 'missing.yml'], ['train', '-opt', 'broken.yml']],
                         ids=lambda argv: ' '.join(argv))
def test_help_and_option_file_errors_answer_without_importing_torch(argv, tmp_path):
    (tmp_path / 'broken.yml').write_text('name: x\n  bad: [\n')
    script = ('import sys\nfrom basicsr_ext.commands.cli import main\n'
              'try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n'
              'print("torch imported:", "torch" in sys.modules, "exit:", code)')
    result = subprocess.run([sys.executable, '-c', script, *argv], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    answers = '--help' in argv or argv == ['--version']
    assert result.stdout.splitlines()[-1] == f'torch imported: False exit: {0 if answers else 2}', \
        result.stdout + result.stderr
    if argv == ['--version']:
        assert result.stdout.startswith('basicsr (asid-basicsr '), result.stdout
    if not answers:
        assert result.stderr.count('\n') == 1 and argv[-1] in result.stderr, result.stderr


def test_the_training_terminal_shows_the_run_and_the_log_file_keeps_the_banner_and_every_option(tmp_path, tiny_data):
    opt_file = write_options(tmp_path / 'quiet.yml', tiny_options(tiny_data, name='quiet', total_iter=1,
                                                                   checkpoint_freq=1, val_freq=1))
    result = run_basicsr('train', '-opt', opt_file, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    terminal = result.stdout + result.stderr
    log = open(glob.glob(str(tmp_path / 'experiments/quiet/train_quiet_*.log'))[0]).read()
    for boilerplate in ('/_____/', 'PyTorch: ', 'manual_seed: 0', 'Disable distributed'):
        assert boilerplate not in terminal, boilerplate
    assert '/_____/' in log and 'manual_seed: 0' in log
    for line in ('Number of train images: 4', 'iter:       1', '# psnr:', 'End of training'):
        assert line in terminal, line


def test_a_run_timed_by_the_benchmark_logs_info_to_its_file_and_only_warnings_and_the_kernels_line_to_the_terminal(
        tmp_path, capsys):
    from basicsr.utils import get_root_logger

    from basicsr_ext.patches.pipeline import fresh_logger, terminal_quiet_below_warning
    fresh_logger()
    logger = get_root_logger(log_file=str(tmp_path / 'run.log'))  # as a run sets it up
    try:
        with terminal_quiet_below_warning(keep=('train.kernels',)):
            logger.info('Network [ASID] is created.')
            logger.info('train.kernels: 18 SLA/SGA layers run the fused attention kernels')
            logger.warning('skipped damaged image a.png')
        logger.info('after the timed run')
        terminal = capsys.readouterr().err
        log = (tmp_path / 'run.log').read_text()
    finally:
        fresh_logger()
    assert 'Network [ASID]' not in terminal and 'Network [ASID]' in log
    for line in ('train.kernels: 18', 'skipped damaged image', 'after the timed run'):
        assert line in terminal and line in log, line
    assert log.count('\n') == 4  # each record once

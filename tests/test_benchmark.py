"""``basicsr benchmark``: the figures it prints are measured, and training goes through ``basicsr train``."""
import glob
import json
import os
import re
import tempfile

import pytest
import torch

from asid_arch import ASID
from basicsr_ext.commands import benchmark_runs
from basicsr_ext.commands.benchmark_runs import NETWORKS, multiply_adds
from conftest import compile_with_backend
from basicsr_ext.commands.cli import main
from basicsr_ext.patches.runs import models_built


def test_multiply_adds_of_a_720p_x4_frame_match_the_papers_21_g():
    macs = multiply_adds(NETWORKS['ASID'](), torch.zeros(1, 3, 180, 320))
    assert 20.0e9 < macs < 21.5e9


def test_swinir_light_takes_sizes_that_are_not_window_multiples():
    net = NETWORKS['SwinIR-light']().eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 13, 10)).shape == (1, 3, 52, 40)


def test_benchmark_prints_the_table_and_json_with_inference_and_training_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    temp = tmp_path / 'tmp'
    temp.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(temp))
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR', raising=False)  # torch's default, which basicsr train replaces
    out_json = tmp_path / 'bench.json'
    code = main(['benchmark', '--device', 'cpu', '--networks', 'ASID', 'SwinIR-light', '--paths', 'plain', 'default',
                 '--size', '24x16', '--repeat', '2', '--warmup', '1', '--train', '--train-iters', '2',
                 '--train-warmup', '1', '--train-workers', '0', '--train-batch', '2', '--train-patch', '16',
                 '--json', str(out_json)])
    assert code == 0
    result = json.loads(out_json.read_text())
    rows = {r['network']: r for r in result['inference'] if r['path'] == 'plain'}
    default = [r for r in result['inference'] if r['path'] == 'default']
    assert [r['network'] for r in default] == ['ASID'] and default[0]['max_abs_diff'] < 1e-5  # channels-last
    assert rows['ASID']['params'] == 313_104
    assert rows['ASID']['output'] == '96x64'
    assert rows['ASID']['latency_ms'] > 0 and rows['ASID']['max_abs_diff'] == 0
    assert rows['SwinIR-light']['params'] > rows['ASID']['params']
    (train,) = result['training']
    assert train['path'] == 'plain' and (train['batch'], train['lr_patch']) == (2, 16) and train['iters_per_s'] > 0
    assert train['first_iter_s'] > 0
    captured = capsys.readouterr()
    printed = captured.out
    # each figure is also logged as soon as it is measured, so a run cut short keeps what it measured
    assert re.search(r'^ASID default batch 1: [\d.]+ ms \([\d.]+ a frame\), max\|diff\| ', captured.err, re.M)
    assert re.search(r'^training ASID x4 \(plain\): [\d.]+ it/s, first iteration after [\d.]+ s$', captured.err,
                     re.M)
    assert 'ASID plain:' in printed and "SwinIR-light's time" in printed
    assert 'training through basicsr train, ASID x4, batch 2, LR patch 16' in printed
    assert 'Network [ASID] is created' not in captured.err  # the timed run's log stays in its log file
    assert (tmp_path / 'experiments').exists() is False  # runs in its own temporary folder,
    assert not list(temp.glob('asid_bench_*'))  # removed at the end,
    # and torch.compile's cache, which basicsr train put there, is back at torch's default (later
    # compilations of this process would make the folder again)
    assert 'asid_bench_' not in os.environ.get('TORCHINDUCTOR_CACHE_DIR', '')


def test_compiled_paths_are_also_timed_on_batches_of_frames_and_report_ms_per_frame(tmp_path, capsys, monkeypatch):
    compile_with_backend(monkeypatch, 'eager')  # the wiring, not Inductor's code (tested in test_fast_path)
    # the wiring, not ASID's size: a one-group ASID is a third of the tracing, once per batch size
    monkeypatch.setitem(NETWORKS, 'ASID', lambda: ASID(upscale=4, num_groups=1, num_feat=8))
    out_json = tmp_path / 'bench.json'
    assert main(['benchmark', '--device', 'cpu', '--networks', 'ASID', '--paths', 'plain', 'compile', '--size',
                 '24x16', '--repeat', '2', '--warmup', '1', '--batch', '1', '3', '--json', str(out_json)]) == 0
    rows = json.loads(out_json.read_text())['inference']
    assert [(r['path'], r['batch']) for r in rows] == [('plain', 1), ('compile', 1), ('compile', 3)]
    batched = rows[2]
    assert batched['ms_per_frame'] == batched['latency_ms'] / 3 and batched['max_abs_diff'] < 1e-5
    assert batched['target_ms'] is None  # the 720p targets are for a GPU
    assert re.search(r'^ASID +compile +3 ', capsys.readouterr().out, re.M)


def test_the_720p_targets_are_one_frames_and_a_frames_in_batches_of_four_on_a_gpu():
    gpu, cpu = torch.device('cuda'), torch.device('cpu')
    assert [benchmark_runs.target_ms('ASID', batch, gpu, (320, 180)) for batch in (1, 2, 4, 8)] == [3.0, 3.0, 2.0, 2.0]
    assert [benchmark_runs.target_ms('ASID-D8', batch, gpu, (320, 180)) for batch in (1, 4)] == [7.0, 5.0]
    assert benchmark_runs.target_ms('ASID', 1, cpu, (320, 180)) is None
    assert benchmark_runs.target_ms('ASID', 1, gpu, (640, 360)) is None
    assert benchmark_runs.target_ms('MSRResNet', 1, gpu, (320, 180)) is None


def test_train_profile_writes_the_profilers_table_of_iterations_before_the_timed_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(benchmark_runs, 'PROFILED_ITERS', 2)
    assert main(['benchmark', '--device', 'cpu', '--networks', 'ASID', '--paths', 'plain', '--size', '24x16',
                 '--repeat', '1', '--warmup', '0', '--train', '--train-iters', '13', '--train-warmup', '12',
                 '--train-workers', '0', '--train-batch', '2', '--train-patch', '16', '--train-profile',
                 str(tmp_path / 'prof')]) == 0
    table = (tmp_path / 'prof.plain.txt').read_text()
    assert table.startswith('2 training iterations') and 'aten::convolution_backward' in table


def test_train_opt_times_a_real_esrgan_stage_and_splits_its_iterations(tmp_path, capsys, monkeypatch):
    import basicsr.train
    import yaml

    from test_realesrgan import STAGE_1, hr_photos_in, shipped_options
    monkeypatch.chdir(tmp_path)
    opt = shipped_options(STAGE_1, hr_photos_in(tmp_path / 'hr'), 'stage1', 1)
    opt['datasets']['train']['num_worker_per_gpu'] = 0
    (tmp_path / 'stage1.yml').write_text(yaml.safe_dump(opt))
    out_json = tmp_path / 'bench.json'
    built, build_model = [], basicsr.train.build_model
    with models_built(lambda model: built.append((model, basicsr.train.build_model))):
        assert main(['benchmark', '--device', 'cpu', '--networks', 'ASID', '--paths', 'plain', '--size', '8x8',
                     '--repeat', '1', '--warmup', '0', '--train', '--train-opt', 'stage1.yml', '--train-iters', '3',
                     '--train-warmup', '1', '--json', str(out_json)]) == 0
    # the timing wraps the methods of the model instance: BasicSR's functions stay its own while it trains
    ((model, build_model_then),) = built
    assert build_model_then is build_model and 'feed_data' in vars(model)
    (row,) = json.loads(out_json.read_text())['training']
    assert (row['path'], row['model'], row['batch'], row['lr_patch']) == ('stage1', 'RealESRNetModel', 2, 8)
    assert row['feed_data_ms'] > 0 and row['optimize_ms'] > 0
    assert row['feed_data_ms'] + row['optimize_ms'] < 1e3 / row['iters_per_s']
    assert re.search(r'^training with stage1 \(RealESRNetModel, ASID x4, batch 2, LR patch 8, 0 loader workers\): '
                     r'[\d.]+ it/s, peak - GB; per iteration: feed_data [\d.]+ ms, optimize_parameters [\d.]+ ms, '
                     r'rest [\d.]+ ms$', capsys.readouterr().out, re.M)
    assert not (tmp_path / 'experiments').exists()


def test_data_benchmark_compares_disk_lmdb_and_in_memory_on_the_same_pairs(tmp_path, capsys):
    out_json = tmp_path / 'data.json'
    assert main(['benchmark', '--data', '--data-count', '3', '--data-samples', '6', '--data-patch', '64',
                 '--data-workers', '1', '--json', str(out_json)]) == 0
    data = json.loads(out_json.read_text())['data']
    rows = {(r['dataset'], r['backend']): r for r in data['rows']}
    assert list(rows) == [('PairedImageDataset', 'disk'), ('PairedImageDataset', 'lmdb'),
                          ('InMemoryPairedImageDataset', 'disk')]
    assert {r['pairs'] for r in rows.values()} == {3}
    assert rows[('InMemoryPairedImageDataset', 'disk')]['memory_gb'] == 3 * (480 * 480 + 120 * 120) * 3 / 1e9
    for r in rows.values():
        assert r['samples_per_s'] > 0 and r['loaders'][0]['workers'] == 1 and r['loaders'][0]['samples_per_s'] > 0
    printed = capsys.readouterr().out
    assert 'training data, x4, HR patch 64, flips and rotations, 3 pairs of 3 generated 480 px images' in printed
    assert re.search(r'^InMemoryPairedImageDataset +disk +[\d.]+ +[\d.]+ +[\d.]+x +0\.002 ', printed, re.M)
    assert 'inference' not in printed  # the data sets only


def test_data_benchmark_reads_a_prepared_set_and_refuses_half_of_one(tmp_path, tiny_data, capsys):
    train = f'{tiny_data}/train'
    assert main(['benchmark', '--data', '--data-gt', f'{train}/HR', '--data-lq', f'{train}/LR', '--data-samples',
                 '4', '--data-patch', '32']) == 0
    assert f'4 pairs of {train}/HR' in capsys.readouterr().out
    assert main(['benchmark', '--data', '--data-gt', f'{train}/HR']) == 2
    assert capsys.readouterr().err.strip() == 'basicsr benchmark: error: --data-gt and --data-lq go together'
    # what basicsr train's check says of a training set, in one line, before anything is timed
    assert main(['benchmark', '--data', '--data-gt', f'{train}/HR', '--data-lq', f'{train}/LR',
                 '--data-patch', '96']) == 2
    assert re.fullmatch(r'basicsr benchmark: error: --data-gt/--data-lq: HR \S+/HR/\S+\.png is 64x64, smaller '
                        r'than gt_size 96', capsys.readouterr().err.strip())
    os.remove(sorted(glob.glob(f'{train}/LR/*.png'))[0])
    assert main(['benchmark', '--data', '--data-gt', f'{train}/HR', '--data-lq', f'{train}/LR']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('basicsr benchmark: error: --data-gt/--data-lq: ') and '\n' not in err and 'LR' in err


def test_profile_times_every_block_of_asid_alone_and_counts_the_sharing_groups_once_each(tmp_path, capsys):
    out_json = tmp_path / 'profile.json'
    assert main(['benchmark', '--device', 'cpu', '--profile', '--networks', 'ASID', '--size', '24x16',
                 '--repeat', '1', '--json', str(out_json)]) == 0
    (profile,) = json.loads(out_json.read_text())['profiles']
    blocks = {r['block']: r for r in profile['blocks']}
    # one distillation block of each kind, measured on the inputs they get inside the network
    for group, calls in (('block0', 1), ('block1', 2)):  # block1 stands for block2 too
        for name in ('LB1', 'SLA1', 'SGA1', 'pw1', 'LB2', 'SLA2', 'SGA2', 'pw2', 'LB3', 'SLA3', 'SGA3', 'pw3',
                     'BlockC', 'res_end', 'esa'):
            assert blocks[f'{group}.{name}']['calls'] == calls
    assert set(blocks) >= {'input', 'output', 'up'} and len(blocks) == 3 + 2 * 15
    assert all(r['kernels'] > 0 and r['us'] > 0 and r['floor_us'] > 0 for r in blocks.values())
    # a sharing SLA reads the map it is given, a computing one writes it: both in the least traffic
    assert blocks['block1.SLA1']['mb'] > blocks['block0.pw1']['mb']
    assert profile['whole']['kernels'] >= sum(r['kernels'] * r['calls'] for r in blocks.values()) * 0.9
    printed = capsys.readouterr().out
    assert re.search(r'^sum of blocks +\d+ +[\d.]+', printed, re.M) and 'per frame, by kind: ' in printed


def test_profile_refuses_a_network_it_cannot_split_into_blocks(capsys):
    assert main(['benchmark', '--device', 'cpu', '--profile', '--networks', 'SwinIR-light']) == 2
    assert capsys.readouterr().err.strip().endswith('--profile measures ASID and ASID-D8: name one with --networks')


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_a_device_it_cannot_use_and_gpu_only_paths_on_the_cpu_are_one_line(capfd):
    for argv, line in [(['--device', 'cuda'], '--device cuda: device cuda requested, but CUDA is not available'),
                       (['--device', 'gpu'], "--device gpu: device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
                       (['--device', 'cpu', '--paths', 'fp16'], '--paths fp16: paths of a GPU only')]:
        assert main(['benchmark', '--networks', 'ASID', '--size', '16x16', '--repeat', '1', *argv]) == 2
        err = capfd.readouterr().err
        assert err.startswith(f'basicsr benchmark: error: {line}') and len(err.splitlines()) == 1, err

"""ASID trains through BasicSR's pipeline (`basicsr train`, `network_g: {type: ASID}`); what its terminal shows."""
import glob
import re

import pytest
import torch

from basicsr_ext.commands.cli import main
from conftest import run_basicsr, tiny_options, write_options


@pytest.mark.parametrize('model_type', ['SRModel', 'ASIDModel'])  # BasicSR's own Model trains ASID as it is
def test_basicsr_train_with_type_asid_lowers_the_l1_loss(model_type, tmp_path, tiny_data, monkeypatch):
    network = {'type': 'ASID', 'upscale': 4, 'num_groups': 3, 'num_feat': 48, 'window_size': 8,
               'value_range': [0, 1]}
    opt = tiny_options(tiny_data, name='asid', network=network, total_iter=20, checkpoint_freq=20, val_freq=20)
    opt['model_type'] = model_type
    opt['train']['optim_g']['lr'] = 2e-3
    opt['train']['scheduler']['milestones'] = [15]
    monkeypatch.chdir(tmp_path)
    assert main(['train', '-opt', write_options(tmp_path / 'asid.yml', opt)]) == 0

    log = open(glob.glob(str(tmp_path / 'experiments/asid/train_asid_*.log'))[0]).read()
    assert 'Network [ASID] is created.' in log
    losses = [float(v) for v in re.findall(r'l_pix: (\S+)', log)]
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, f'mean L1 of the first 5 iterations {first:.4f}, of the last 5 {last:.4f}'


@pytest.mark.parametrize('total_iter', [4, 3])  # the last iteration validated, or not
def test_training_terminal_summarises_the_network_and_ends_with_the_latest_model_against_bicubic(
        total_iter, tmp_path, tiny_data):
    network = {'type': 'ASID', 'upscale': 4, 'num_groups': 1, 'num_feat': 8}
    opt = tiny_options(tiny_data, name='quiet', network=network, total_iter=total_iter, checkpoint_freq=2,
                       val_freq=2)
    opt['model_type'] = 'ASIDModel'
    # 4 images in batches of 2: BasicSR's loop ends with its iteration counter past the end
    result = run_basicsr('train', '-opt', write_options(tmp_path / 'quiet.yml', opt), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    terminal = result.stdout + result.stderr
    log = open(glob.glob(str(tmp_path / 'experiments/quiet/train_quiet_*.log'))[0]).read()
    assert 'Network: ASID, with parameters: 14,606 (structure in the log file)' in terminal
    assert '(esa): EnhancedSpatialAttention(' not in terminal and '(esa): EnhancedSpatialAttention(' in log
    assert 'eta: -1 day' not in terminal
    validated = re.findall(r'Validation tiny_val\n\s+# psnr: [\d.]+\s+Best: [\d.]+ @ (\d+) iter', terminal)
    assert validated == ['2', '4'] if total_iter == 4 else validated == ['2', '3']
    end = terminal[terminal.index('End of training'):]
    assert f'Latest model (iteration {total_iter}): experiments/quiet/models/net_g_latest.pth\n' in end
    last = [line for line in terminal.splitlines() if ' INFO: ' in line][-1]
    assert re.search(rf'net_g_latest.pth: tiny_val at iteration {total_iter}: ASID PSNR [\d.]+ '
                     r'\(bicubic [\d.]+\)$', last), last


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_a_gpu_a_compiled_bf16_run_trains_through_the_fused_kernels_unless_turned_off(tmp_path, tiny_data,
                                                                                          monkeypatch):
    # the way the GPU recipe trains (train_ASID_x4_BSDS200.yml): compiled, bf16, one CUDA graph
    network = {'type': 'ASID', 'upscale': 4, 'num_groups': 2, 'num_feat': 16}
    monkeypatch.chdir(tmp_path)
    runs = {}
    for kernels in (True, False):
        name = f'fused_{kernels}'
        opt = tiny_options(tiny_data, name=name, network=network, total_iter=12, checkpoint_freq=12, val_freq=12)
        opt.update(model_type='ASIDModel', num_gpu=1)
        opt['datasets']['train'].update(num_worker_per_gpu=2, persistent_workers=True)
        opt['train'].update(compile=True, precision='bf16', kernels=kernels)
        assert main(['train', '-opt', write_options(tmp_path / f'{name}.yml', opt)]) == 0
        runs[kernels] = open(glob.glob(str(tmp_path / f'experiments/{name}/train_{name}_*.log'))[0]).read()
    assert 'train.kernels: 12 SLA/SGA layers run the fused attention kernels' in runs[True]
    assert 'train.kernels' not in runs[False]
    fused, plain = ([float(v) for v in re.findall(r'l_pix: (\S+)', runs[k])] for k in (True, False))
    assert len(fused) == len(plain) == 12
    assert fused == pytest.approx(plain, rel=0.02)  # the same batches (seeded); bf16 rounds the two apart

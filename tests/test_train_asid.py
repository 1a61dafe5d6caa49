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


@pytest.mark.parametrize('train, fused, logged', [
    ({'compile': True, 'precision': 'bf16'}, 12, 'train.kernels: 12 SLA/SGA layers run the fused attention kernels'),
    ({'compile': True, 'precision': 'bf16', 'kernels': True}, 12, 'train.kernels: 12 SLA/SGA layers run'),
    ({'compile': True, 'precision': 'bf16', 'kernels': False}, 0, None),
    ({'compile': True, 'precision': 'fp32', 'kernels': True}, 0,
     'train.kernels: not used (train: precision is not bf16)'),
    ({'compile': False, 'precision': 'bf16', 'kernels': True}, 0, 'train.kernels: not used (train: compile is off)'),
    ({'compile': False, 'precision': 'bf16'}, 0, None),  # the default asks for nothing: no line
], ids=['default', 'asked for', 'turned off', 'fp32', 'eager', 'eager by default'])
def test_asid_model_fuses_the_trained_network_not_its_ema_only_for_a_compiled_bf16_step(train, fused, logged, tiny_data,
                                                                                       monkeypatch, basicsr_log):
    # where the kernels can run (a GPU with Triton: stood in for here, the layers' switch is real)
    from basicsr.models import build_model

    from basicsr_ext.training import models
    monkeypatch.setattr(models, 'fused_kernels_available', lambda device, dtype: dtype == torch.bfloat16)
    opt = tiny_options(tiny_data, network={'type': 'ASID', 'upscale': 4, 'num_groups': 2, 'num_feat': 16})
    opt.update(model_type='ASIDModel', is_train=True, dist=False, rank=0, world_size=1)
    opt['train'].update(ema_decay=0.999, **train)
    model = build_model(opt)

    def switched(net):
        return sum(type(m).__name__ == 'FusedSpatialAttention' for m in net.modules())

    assert model.fused_layers == switched(model.net_g) == fused and switched(model.net_g_ema) == 0
    lines = [line for line in basicsr_log if 'train.kernels' in line]
    assert lines == [] if logged is None else len(lines) == 1 and lines[0].startswith(logged)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_a_gpu_a_compiled_bf16_run_trains_through_the_fused_kernels_unless_turned_off(tmp_path, tiny_data,
                                                                                          monkeypatch, basicsr_log):
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
    for log in runs.values():  # the step replays as a CUDA graph: a failed capture would only warn
        assert 'CUDA graph capture of the training step failed' not in log
    fused, plain = ([float(v) for v in re.findall(r'l_pix: (\S+)', runs[k])] for k in (True, False))
    assert len(fused) == len(plain) == 12
    assert fused == pytest.approx(plain, rel=0.02)  # the same batches (seeded); bf16 rounds the two apart

"""ASID trains through BasicSR's own pipeline: ``basicsr train`` with ``network_g: {type: ASID}``."""
import glob
import re

from basicsr_ext.cli import main
from conftest import tiny_options, write_options


def test_basicsr_train_with_type_asid_lowers_the_l1_loss(tmp_path, tiny_data, monkeypatch):
    network = {'type': 'ASID', 'upscale': 4, 'num_groups': 3, 'num_feat': 48, 'window_size': 8,
               'value_range': [0, 1]}
    opt = tiny_options(tiny_data, name='asid', network=network, total_iter=20, checkpoint_freq=20, val_freq=20)
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

"""Each patch in basicsr_ext.patches.compat: the upstream breakage it works around is gone."""
import collections
import io
import pickle
import subprocess
import sys

import pytest
import torch

import basicsr_ext  # noqa: F401  (applies the patches)
from basicsr_ext.patches import compat
from conftest import free_port


def test_basicsr_imports_without_torchvision_functional_tensor():
    # basicsr.data.degradations does `from torchvision.transforms.functional_tensor import rgb_to_grayscale`
    from basicsr.data import degradations
    from torchvision.transforms import functional

    assert degradations.rgb_to_grayscale is functional.rgb_to_grayscale


def test_apply_runs_each_patch_once_and_reports_what_it_applied(monkeypatch):
    assert compat.apply() is compat.apply()
    assert set(compat.APPLIED) <= {p.__name__ for p in compat.PATCHES}
    assert len(compat.APPLIED) == len(set(compat.APPLIED))
    # this stack needs these (torchvision >= 0.17; no GPU; PyPI 1.4.2's Adam-only optimizers,
    # its saving, resuming, loading and eta; today's F.pad keeping channels-last): they were applied,
    # so the list is not just empty
    needed = {'patch_functional_tensor', 'patch_optimizers', 'patch_resume', 'patch_atomic_save',
              'patch_eta_off_by_one', 'patch_filter2d_layout'} | (
                  {'patch_cpu_distributed', 'patch_realesrgan_cpu'} if not torch.cuda.is_available() else set())
    assert needed <= set(compat.APPLIED), compat.APPLIED

    # on a fresh process's state: each patch runs once however often apply() is called, and
    # exactly those that changed something are reported, in order
    calls = []

    def fake(name, applies):
        def patch():
            calls.append(name)
            return applies
        patch.__name__ = name
        return patch

    fixes, others = (fake('fix', True),), (fake('needed', True), fake('not_needed', False), fake('also', True))
    monkeypatch.setattr(compat, 'APPLIED', [])
    monkeypatch.setattr(compat, '_checked', set())
    monkeypatch.setattr(compat, 'IMPORT_FIXES', fixes)
    monkeypatch.setattr(compat, 'PATCHES', fixes + others)
    assert compat.apply_import_fixes() == ['fix']
    assert compat.apply() == ['fix', 'needed', 'also']
    assert compat.apply() == ['fix', 'needed', 'also']
    assert calls == ['fix', 'needed', 'not_needed', 'also']


def _basicsr_training_state():
    """What BasicSR's BaseModel.save_training_state writes, built with BasicSR's own classes."""
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.ones(3)
    optimizer.step()
    schedulers = [MultiStepRestartLR(optimizer, milestones=[10, 20], gamma=0.5),
                  CosineAnnealingRestartLR(optimizer, periods=[10], restart_weights=[1])]
    return {'epoch': 1, 'iter': 5, 'optimizers': [optimizer.state_dict()],
            'schedulers': [s.state_dict() for s in schedulers]}


def test_basicsr_training_state_loads_with_the_safe_loader():
    buffer = io.BytesIO()
    torch.save(_basicsr_training_state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert isinstance(state['schedulers'][0]['milestones'], collections.Counter)
    assert state['iter'] == 5


def test_safe_loader_patch_adds_exactly_counter_where_torch_lacks_it(monkeypatch):
    # torch 2.14 allows Counter already (the patch does nothing here); on a torch that does not,
    # the patch must add that one type and nothing else
    from torch import _weights_only_unpickler
    added = []
    monkeypatch.setattr(_weights_only_unpickler, '_get_allowed_globals', lambda: {})
    monkeypatch.setattr(torch.serialization, 'add_safe_globals', added.append)
    assert compat.patch_safe_loader() is True
    assert added == [[collections.Counter]]


class _CarriesCode:
    def __reduce__(self):
        return (print, ('this ran while loading a checkpoint',))


def test_safe_loader_still_refuses_a_checkpoint_that_carries_code():
    buffer = io.BytesIO()
    torch.save({'params': {}, 'payload': _CarriesCode()}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer, weights_only=True)


def test_resume_state_loads_on_a_machine_without_gpu(tmp_path):
    import basicsr.train
    path = tmp_path / 'experiments' / 'run' / 'training_states' / '5.state'
    path.parent.mkdir(parents=True)
    torch.save(_basicsr_training_state(), path)
    opt = {'name': 'run', 'auto_resume': False, 'path': {'resume_state': str(path)}, 'rank': 0}
    state = basicsr.train.load_resume_state(opt)
    assert state['iter'] == 5
    assert state['optimizers'][0]['state'][0]['exp_avg'].device.type == 'cpu'


def test_auto_resume_picks_the_latest_state(tmp_path, monkeypatch):
    import basicsr.train
    monkeypatch.chdir(tmp_path)
    states = tmp_path / 'experiments' / 'run' / 'training_states'
    states.mkdir(parents=True)
    for it in (5, 10):
        torch.save({**_basicsr_training_state(), 'iter': it}, states / f'{it}.state')
    opt = {'name': 'run', 'auto_resume': True, 'path': {'resume_state': None}, 'rank': 0}
    assert basicsr.train.load_resume_state(opt)['iter'] == 10
    assert opt['path']['resume_state'].endswith('10.state')


@pytest.mark.parametrize('name', ['Adam', 'AdamW', 'SGD'])
def test_basicsr_models_build_the_optimizers_of_basicsr_master(name):
    from basicsr.models.base_model import BaseModel
    optimizer = BaseModel.get_optimizer(None, name, [torch.nn.Parameter(torch.ones(1))], 1e-3)
    assert type(optimizer) is getattr(torch.optim, name)


def test_unknown_optimizer_is_named_in_the_error():
    from basicsr.models.base_model import BaseModel
    with pytest.raises(NotImplementedError, match='Adamm'):
        BaseModel.get_optimizer(None, 'Adamm', [torch.nn.Parameter(torch.ones(1))], 1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the gloo fallback applies to machines without a GPU')
def test_distributed_init_uses_gloo_without_gpu(monkeypatch):
    import torch.distributed as dist
    from basicsr.utils import dist_util
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    dist_util._init_dist_pytorch('nccl')  # what init_dist('pytorch') calls, with upstream's default backend
    try:
        assert dist.get_backend() == 'gloo'
        assert dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()


def test_ddp_loader_workers_are_spawned_even_after_a_progress_bar_fixed_fork():
    # BasicSR's init_dist chooses spawn only when no start method is fixed; a tqdm bar (the data
    # check shows one) makes a multiprocessing lock first, which fixes fork. A fresh interpreter:
    # the start method is process-wide.
    result = _fresh_python(
        'import multiprocessing, basicsr_ext.patches.hook; from basicsr.utils import dist_util, options; '
        'from tqdm import tqdm; tqdm(total=1).close(); before = multiprocessing.get_start_method(allow_none=True); '
        'dist_util._init_dist_pytorch = lambda backend, **kwargs: None; options.init_dist("pytorch"); '
        'print(before, multiprocessing.get_start_method(allow_none=True))')
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['fork', 'spawn']


def test_loose_version_stand_in_orders_versions_as_basicsr_needs():
    # used by basicsr.archs.arch_util where Python >= 3.12 has no distutils
    from basicsr_ext.patches.compat import LooseVersion
    assert LooseVersion('0.29.1') >= LooseVersion('0.9.0')
    assert LooseVersion('0.8.2') < '0.9.0'
    assert LooseVersion('2.14.1+cu130') > '2.14'


def test_basicsr_arch_util_imports_on_this_python():
    from basicsr.archs import arch_util
    assert arch_util.LooseVersion('1.10') > arch_util.LooseVersion('1.9')


def _fresh_python(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('first', ['basicsr', 'asid_arch'])
def test_any_fresh_interpreter_imports_basicsr_patched_whatever_it_imports_first(first):
    # The installed asid_basicsr.pth hooks the import of basicsr in every interpreter, so a
    # user's script needs no particular import order (and a spawned worker needs no import of ours).
    result = _fresh_python(f'import {first}, basicsr, asid_arch\n'
                           'from basicsr.utils.registry import ARCH_REGISTRY\n'
                           'from basicsr_ext.patches import compat\n'
                           'print("ASID" in ARCH_REGISTRY, sorted(compat.APPLIED) == sorted(set(compat.APPLIED)))')
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['True', 'True']


def test_the_startup_hook_imports_nothing_until_basicsr_is_imported():
    result = _fresh_python('import sys; from basicsr_ext.patches import hook\n'
                           'print(hook.installed() is not None, "torch" in sys.modules, "basicsr" in sys.modules)')
    assert result.stdout.split() == ['True', 'False', 'False'], result.stderr[-2000:]


@pytest.mark.parametrize('start_method', ['spawn', 'forkserver'])
def test_dataloader_workers_started_fresh_load_basicsr_datasets(start_method, tiny_data):
    # Such a worker is a new interpreter that unpickles the data set, importing BasicSR first thing.
    from basicsr.data.paired_image_dataset import PairedImageDataset
    dataset = PairedImageDataset({
        'phase': 'train', 'scale': 4, 'gt_size': 32, 'use_hflip': True, 'use_rot': True,
        'dataroot_gt': f'{tiny_data}/train/HR', 'dataroot_lq': f'{tiny_data}/train/LR',
        'io_backend': {'type': 'disk'}})
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, multiprocessing_context=start_method)
    batch = next(iter(loader))
    assert batch['gt'].shape == (2, 3, 32, 32) and batch['lq'].shape == (2, 3, 8, 8)


def test_training_log_eta_at_the_last_iteration_is_zero_not_minus_one_day():
    from basicsr.utils.logger import MessageLogger
    opt = {'name': 'run', 'logger': {'print_freq': 1, 'use_tb_logger': False}, 'train': {'total_iter': 10}}
    lines = []
    for current_iter in (9, 10):
        msg = MessageLogger(opt, start_iter=0)
        msg.start_time -= 100  # 10 s per iteration
        msg.logger = type('Logger', (), {'info': staticmethod(lines.append)})
        msg({'epoch': 1, 'iter': current_iter, 'lrs': [1e-3], 'time': 10., 'data_time': 0.})
    assert 'eta: 0:00:' in lines[0] and 'eta: 0:00:00' not in lines[0]  # one iteration left
    assert 'eta: 0:00:00' in lines[1]  # none left


def _realesrnet_options():
    """What RealESRNetModel's constructor reads, with a tiny ASID, on the CPU."""
    return {'name': 'cpu', 'model_type': 'RealESRNetModel', 'scale': 4, 'num_gpu': 0, 'is_train': False,
            'dist': False, 'queue_size': 4, 'network_g': {'type': 'ASID', 'upscale': 4, 'num_groups': 1, 'num_feat': 8},
            'path': {'pretrain_network_g': None}, 'val': {}}


@pytest.mark.skipif(torch.cuda.is_available(), reason='the patch applies without CUDA only')
def test_realesrgan_models_build_and_pool_their_batches_on_a_machine_without_gpu():
    import asid_arch  # noqa: F401  (registers ASID)
    from basicsr.models.realesrnet_model import RealESRNetModel
    model = RealESRNetModel(_realesrnet_options())  # upstream: .cuda() on the JPEG simulator and sharpener
    assert model.jpeger(torch.rand(2, 3, 16, 16), quality=torch.tensor([50., 90.])).device.type == 'cpu'
    batches = [(torch.full((2, 3, 4, 4), float(i)), torch.full((2, 3, 16, 16), float(i))) for i in range(3)]
    for lq, gt in batches:  # the pool (4 pairs) fills with two batches, then swaps
        model.lq, model.gt = lq, gt
        model._dequeue_and_enqueue()  # upstream: the pool made with .cuda()
    assert model.queue_lr.device.type == 'cpu' and model.queue_lr.shape == (4, 3, 4, 4)
    assert set(model.lq.flatten().tolist()) <= {0., 1.} and 2. in model.queue_lr


def test_basicsr_filter2d_blurs_diffjpeg_output_as_a_contiguous_batch():
    from basicsr.models import realesrnet_model
    from basicsr.utils import DiffJPEG
    from basicsr.utils.img_process_util import filter2D
    jpeg = DiffJPEG(differentiable=False)
    image = jpeg(torch.rand(2, 3, 20, 20), quality=torch.tensor([40., 80.]))  # channels-last, sliced
    kernels = torch.rand(2, 5, 5)
    assert torch.equal(filter2D(image, kernels), filter2D(image.contiguous(), kernels))
    assert realesrnet_model.filter2D is filter2D  # what the model calls

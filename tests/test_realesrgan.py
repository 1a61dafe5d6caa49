"""ASID in BasicSR's own Real-ESRGAN pipeline: the shipped option files of both stages train, save
and resume on the CPU (degradations in feed_data, a DataLoader worker process), and what they
train loads like any ASID checkpoint in ``basicsr infer``, ``basicsr export`` and spandrel."""
import glob
import os
import re
import shutil

import cv2
import pytest
import torch
import yaml

import asid_arch  # noqa: F401  (registers ASID, as the basicsr command does: load_and_check is called directly below)
from basicsr_ext.commands.cli import main
from basicsr_ext.commands.prepare import prepare_realesrgan
from basicsr_ext.common.options import VGG19_FILE, OptionError, load_and_check
from conftest import REPO, make_image, run_basicsr, write_options

STAGE_1 = os.path.join(REPO, 'options', 'train_ASID_x4_realesrnet.yml')
STAGE_2 = os.path.join(REPO, 'options', 'train_ASID_x4_realesrgan.yml')


def write_random_vgg19(path):
    """A VGG19 state dict of torchvision's shapes with random convolutions, standing in for
    ``vgg19-dcbb9e9d.pth``. BasicSR loads the whole state dict strictly but uses only the
    convolutions; the classifier's 124M weights are stored as one value each (expanded), so the
    file is 80 MB, not 550."""
    import torchvision
    with torch.device('meta'):
        shapes = {k: v.shape for k, v in torchvision.models.vgg19(weights=None).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if not key.startswith('features'):
            state[key] = torch.zeros(1).expand(shape)
        elif len(shape) > 1:  # He initialisation, so features neither vanish nor explode
            state[key] = torch.randn(shape, generator=generator) * (2 / shape[1:].numel()) ** 0.5
        else:
            state[key] = torch.zeros(shape)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope='module')
def vgg19(tmp_path_factory):
    return write_random_vgg19(str(tmp_path_factory.mktemp('vgg') / VGG19_FILE))


@pytest.fixture(scope='module')
def hr_photos(tmp_path_factory):
    return hr_photos_in(tmp_path_factory.mktemp('hr'))


def hr_photos_in(folder):
    """Prepared as users do: ``prepare realesrgan`` of three HR images; returns ``dataroot_gt``."""
    os.makedirs(folder, exist_ok=True)
    sources = {}
    for i, (h, w) in enumerate(((120, 96), (96, 96), (160, 128))):
        sources[f'img{i}'] = str(folder / f'img{i}.png')
        cv2.imwrite(sources[f'img{i}'], make_image(h, w, i))
    output = str(folder / 'RealESRGAN')
    prepare_realesrgan(sources, output, crop_size=64, step=48, min_size=32, workers=1, log=lambda *a: None)
    return output


def shipped_options(path, data, name, total_iter):
    """The shipped option file, at CPU-test size: 32 px patches, batches of 2, one loader worker, small networks."""
    with open(path) as f:
        opt = yaml.safe_load(f)
    opt.update(name=name, gt_size=32, queue_size=4)
    train = opt['datasets']['train']
    train.update(dataroot_gt=data, meta_info=os.path.join(data, 'meta_info_multiscale_sub.txt'), gt_size=32,
                 batch_size_per_gpu=2, num_worker_per_gpu=1)
    opt['train']['total_iter'] = total_iter
    opt['logger'].update(print_freq=1, save_checkpoint_freq=1, use_tb_logger=False)
    opt['network_g'].update(num_groups=1, num_feat=8)  # the smallest ASID: export and inference in seconds
    if 'network_d' in opt:
        opt['network_d']['num_feat'] = 8
    return opt


def train_log(cwd, name):
    return ''.join(open(p).read() for p in sorted(glob.glob(os.path.join(cwd, 'experiments', name, 'train_*.log'))))


@pytest.fixture(scope='module')
def stage_1(tmp_path_factory, hr_photos):
    """Stage 1 from the shipped file, as a user runs it (``basicsr train``): one iteration, saved, then
    resumed (``--auto_resume``, in this process) for a second."""
    cwd = str(tmp_path_factory.mktemp('stage1'))
    opt = write_options(os.path.join(cwd, 'stage1.yml'), shipped_options(STAGE_1, hr_photos, 'stage1', 1))
    first = run_basicsr('train', '-opt', opt, cwd=cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    in_dir(cwd, main, ['train', '-opt', opt, '--auto_resume', '--force_yml', 'train:total_iter=2'])
    return cwd


def in_dir(cwd, function, *args):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert function(*args) == 0
    finally:
        os.chdir(old)


def test_stage_1_realesrnet_trains_ema_weights_and_resumes(stage_1):
    log = train_log(stage_1, 'stage1')
    assert 'Model [RealESRNetModel] is created.' in log and 'Network [ASID] is created.' in log
    assert 'Resuming training from epoch: 0, iter: 1.' in log
    losses = re.findall(r'iter:\s+(\d+), .*l_pix: (\S+)', log)
    assert [int(i) for i, _ in losses] == [1, 2]
    saved = torch.load(os.path.join(stage_1, 'experiments/stage1/models/net_g_latest.pth'), weights_only=True)
    assert {'params', 'params_ema'} <= set(saved)


@pytest.fixture(scope='module')
def stage_2(tmp_path_factory, stage_1, hr_photos, vgg19):
    """Stage 2 from stage 1's EMA weights, in the working directory a user has, VGG19 weights in place."""
    cwd = str(tmp_path_factory.mktemp('stage2'))
    os.makedirs(os.path.join(cwd, 'experiments', 'pretrained_models'))
    os.symlink(vgg19, os.path.join(cwd, 'experiments', 'pretrained_models', VGG19_FILE))
    opt = shipped_options(STAGE_2, hr_photos, 'stage2', 1)
    opt['path']['pretrain_network_g'] = os.path.join(stage_1, 'experiments/stage1/models/net_g_latest.pth')
    path = write_options(os.path.join(cwd, 'stage2.yml'), opt)
    in_dir(cwd, main, ['train', '-opt', path])
    in_dir(cwd, main, ['train', '-opt', path, '--auto_resume', '--force_yml', 'train:total_iter=2'])
    return cwd


def test_stage_2_realesrgan_starts_from_stage_1_with_perceptual_and_gan_losses_and_resumes(stage_2):
    log = train_log(stage_2, 'stage2')
    assert 'Model [RealESRGANModel] is created.' in log and 'Network [UNetDiscriminatorSN] is created.' in log
    assert re.search(r'Loading ASID model from .*stage1/models/net_g_latest.pth, with param key: \[params_ema\]', log)
    assert 'Resuming training from epoch: 0, iter: 1.' in log
    steps = re.findall(r'iter:\s+(\d+), .*l_g_pix: (\S+) l_g_percep: (\S+) l_g_gan: (\S+)', log)
    assert [int(s[0]) for s in steps] == [1, 2]
    assert all(float(v) > 0 for s in steps for v in s[1:])
    assert os.path.isfile(os.path.join(stage_2, 'experiments/stage2/models/net_d_latest.pth'))


def test_realesrgan_checkpoint_upscales_in_infer_exports_and_loads_in_spandrel(stage_2, tmp_path):
    from asid_arch.spandrel_arch import load_file
    checkpoint = os.path.join(stage_2, 'experiments/stage2/models/net_g_latest.pth')
    os.makedirs(tmp_path / 'in')
    cv2.imwrite(str(tmp_path / 'in' / 'photo.png'), make_image(20, 24, 3))
    assert main(['infer', '-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), '--model-path', checkpoint,
                 '--device', 'cpu', '-q']) == 0
    assert cv2.imread(str(tmp_path / 'out' / 'photo_ASID_x4.png')).shape == (80, 96, 3)

    assert main(['export', '--model-path', checkpoint, '-o', str(tmp_path / 'asid.onnx')]) == 0
    assert os.path.getsize(tmp_path / 'asid.onnx') > 0

    model = load_file(checkpoint)  # spandrel's loader; the value range the run trained in
    assert model.architecture.name == 'ASID' and model.scale == 4 and model.model.value_range == (-1, 1)
    ema = torch.load(checkpoint, weights_only=True)['params_ema']
    assert all(torch.equal(model.model.state_dict()[k], v) for k, v in ema.items())
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------- option checks
def _check(tmp_path, opt):
    path = write_options(tmp_path / 'opt.yml', opt)
    with pytest.raises(OptionError) as e:
        load_and_check(path)
    assert not os.path.exists(tmp_path / 'experiments')
    return str(e.value)


def test_missing_vgg19_weights_are_named_with_place_size_and_url_before_any_folder(tmp_path, hr_photos,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))  # torch's hub cache: empty
    opt = shipped_options(STAGE_2, hr_photos, 'stage2', 2)
    opt['path']['pretrain_network_g'] = None
    message = _check(tmp_path, opt)
    assert '\n' not in message
    assert (f'train.perceptual_opt: needs the VGG19 weights vgg19-dcbb9e9d.pth (574,673,361 bytes, '
            f'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth): put the file at '
            f'{tmp_path}/experiments/pretrained_models/vgg19-dcbb9e9d.pth') in message
    assert f'{tmp_path}/torch/hub/checkpoints/vgg19-dcbb9e9d.pth' in message


@pytest.mark.parametrize('change, expected', [
    (lambda o: o['datasets']['train'].pop('kernel_list2'), 'missing option datasets.train.kernel_list2'),
    (lambda o: o['datasets']['train']['kernel_prob'].pop(), 'datasets.train.kernel_prob: one probability per kernel'),
    (lambda o: o.pop('jpeg_range2'), 'missing option jpeg_range2'),
    (lambda o: o.update(queue_size=5), 'queue_size: the training pair pool must hold a whole number of batches'),
    (lambda o: o.update(gt_size=30), 'gt_size: must be a multiple of the scale 4 up to 400'),
    (lambda o: o['datasets']['train'].update(type='PairedImageDataset', dataroot_lq='.'),
     'datasets.train.type: RealESRNetModel degrades the ground truth with the blur kernels of RealESRGANDataset'),
    (lambda o: o['datasets']['train'].update(meta_info='nowhere.txt'), 'datasets.train.meta_info: path nowhere.txt'),
])
def test_realesrgan_option_mistakes_are_one_line_before_any_folder(change, expected, tmp_path, hr_photos,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = shipped_options(STAGE_1, hr_photos, 'stage1', 2)
    change(opt)
    message = _check(tmp_path, opt)
    assert expected in message and '\n' not in message


def test_a_sub_image_missing_from_the_gt_list_is_named_with_its_line(tmp_path, hr_photos, monkeypatch):
    data = str(tmp_path / 'data')
    shutil.copytree(hr_photos, data)
    with open(os.path.join(data, 'meta_info_multiscale_sub.txt')) as f:
        second = f.read().splitlines()[1]
    os.remove(os.path.join(data, second))
    monkeypatch.chdir(tmp_path)
    message = _check(tmp_path, shipped_options(STAGE_1, data, 'stage1', 2))
    assert message.endswith(f'datasets.train.meta_info: {data}/meta_info_multiscale_sub.txt line 2: '
                            f'{data}/{second} does not exist')


def _flat(node, prefix=''):
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in _flat(value, f'{prefix}{key}.').items()}


@pytest.mark.parametrize('stage', [STAGE_1, STAGE_2])
def test_demo_files_are_the_shipped_stages_at_cpu_size_with_the_same_degradations(stage):
    with open(stage) as f:
        shipped = _flat(yaml.safe_load(f))
    with open(stage.replace('.yml', '_demo.yml')) as f:
        demo = _flat(yaml.safe_load(f))
    assert demo.keys() == shipped.keys()
    changed = {k.rstrip('.') for k in shipped if shipped[k] != demo[k]}
    sizes = {'name', 'gt_size', 'queue_size', 'datasets.train.name', 'datasets.train.dataroot_gt',
             'datasets.train.meta_info', 'datasets.train.gt_size', 'datasets.train.num_worker_per_gpu',
             'datasets.train.batch_size_per_gpu', 'train.total_iter', 'train.scheduler.milestones',
             'logger.print_freq', 'logger.save_checkpoint_freq', 'logger.use_tb_logger'}
    extra = ({'train.optim_g.lr'} if stage == STAGE_1 else {'network_d.num_feat', 'path.pretrain_network_g'})
    assert changed == sizes | extra

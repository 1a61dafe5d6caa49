"""The option files in options/: the recipe they state, and each one run through ``basicsr``.

Every train file (disk and LMDB) builds its network and data sets and trains one iteration
on a stub of the data laid out at the file's own relative paths, made by ``basicsr prepare``;
every test file runs ``basicsr test`` on stubs of its five benchmark sets. ``--force_yml``
keeps the runs small enough for a CPU (batch 2 of 16 px LR patches, no CUDA prefetch, no loader
processes).
"""
import csv
import glob
import os
import re
import shutil

import cv2
import numpy as np
import pytest
import torch

from basicsr_ext.commands import prepare
from basicsr_ext.commands.cli import main
from basicsr_ext.common.optionfile import read_options
from basicsr_ext.common.options import OptionError, check_options
from basicsr_ext.training import data, models  # noqa: F401  (register their dataset and model, as basicsr train does)
from asid_arch import ASID
from asid_arch.tiling import tiled_forward
from basicsr.utils import img2tensor, tensor2img  # noqa: E402  (after basicsr_ext)
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402
from conftest import REPO, make_image, run_basicsr, tiny_options, write_options

OPTIONS = os.path.join(REPO, 'options')
VARIANTS = [('ASID', 'ASID', 3), ('ASID_D8', 'ASID_D8', 8)]  # file stem, network type, groups
SCALES = (2, 3, 4)
TRAIN_FILES = [f'train_{stem}_x{s}{lmdb}.yml' for stem, _, _ in VARIANTS for s in SCALES for lmdb in ('', '_lmdb')]
FINETUNE_FILES = [f'train_{stem}_x{s}_finetune.yml' for stem, _, _ in VARIANTS for s in SCALES]
TEST_FILES = [f'test_{stem}_x{s}.yml' for stem, _, _ in VARIANTS for s in SCALES]
BENCHMARKS = ['Set5', 'Set14', 'B100', 'Urban100', 'Manga109']

#: What makes a one-iteration run fast on a CPU (each key exists in every train file).
FAST_TRAIN = ['train:total_iter=1', 'datasets:train:batch_size_per_gpu=2', 'datasets:train:num_worker_per_gpu=0',
              'datasets:train:prefetch_mode=~', 'datasets:train:pin_memory=false', 'val:val_freq=1',
              'logger:use_tb_logger=false', 'num_gpu=0', 'train:compile=false']


def fast_train(scale):
    """:data:`FAST_TRAIN` for a file of ``scale``, with LR patches of 16 px (two windows): the files'
    64 px patches only make the iteration four times as long here."""
    return [*FAST_TRAIN, f'datasets:train:gt_size={16 * scale}']


def load(name):
    return read_options(os.path.join(OPTIONS, name))


def file_facts(name):
    """(network type, groups, scale, lmdb) from a file name such as train_ASID_D8_x4_lmdb.yml."""
    m = re.fullmatch(r'(?:train|test)_(ASID(?:_D8)?)_x(\d)(_lmdb)?(?:_finetune)?\.yml', name)
    net, groups = {'ASID': ('ASID', 3), 'ASID_D8': ('ASID_D8', 8)}[m.group(1)]
    return net, groups, int(m.group(2)), bool(m.group(3))


def metrics_in(log_text):
    """{dataset name: psnr} from a BasicSR train/test log."""
    found = re.findall(r'Validation (\S+)\n\s+# psnr: ([\d.]+)', log_text)
    return {name: float(psnr) for name, psnr in found}


# ------------------------------------------------------------------------------------------
# what the files say
# ------------------------------------------------------------------------------------------
def test_there_is_a_train_lmdb_finetune_and_test_file_for_each_variant_and_scale():
    present = set(os.listdir(OPTIONS))
    assert set(TRAIN_FILES) <= present and set(FINETUNE_FILES) <= present and set(TEST_FILES) <= present


@pytest.mark.parametrize('name', TRAIN_FILES)
def test_train_file_states_the_release_recipe_at_the_paths_prepare_writes(name):
    opt = load(name)
    net, groups, scale, lmdb = file_facts(name)
    assert opt['name'] == name[:-4] and opt['model_type'] == 'ASIDModel' and opt['scale'] == scale
    train = opt['datasets']['train']
    layout = prepare.div2k_layout(os.path.join('datasets', 'DIV2K'), 'DIV2K_train', [scale])
    # decoded once into memory from the PNG files; an LMDB is read by BasicSR's own type
    assert train['type'] == ('PairedImageDataset' if lmdb else 'InMemoryPairedImageDataset')
    if lmdb:
        assert (train['dataroot_gt'], train['dataroot_lq']) == (layout['hr_lmdb'], layout['lr_lmdb'][scale])
        assert train['io_backend'] == {'type': 'lmdb'} and 'meta_info_file' not in train
    else:
        assert (train['dataroot_gt'], train['dataroot_lq']) == (layout['hr'], layout['lr'][scale])
        assert train['meta_info_file'] == layout['meta_info'] and train['io_backend'] == {'type': 'disk'}
    assert train['gt_size'] == 64 * scale and train['use_hflip'] is True and train['use_rot'] is True
    assert train['batch_size_per_gpu'] == 16 and train['num_worker_per_gpu'] == 'auto' and train['persistent_workers']
    assert train['prefetch_mode'] == 'cuda' and train['pin_memory'] is True
    val = opt['datasets']['val']
    assert (val['name'], val['type']) == ('Set5', 'PairedImageDataset')
    assert (val['dataroot_gt'], val['dataroot_lq']) == prepare.benchmark_layout('datasets', 'Set5', scale)
    assert opt['network_g'] == {'type': net, 'upscale': scale, 'num_groups': groups, 'num_feat': 48,
                                'window_size': 8, 'value_range': [-1, 1]}
    recipe = opt['train']
    assert (recipe['compile'], recipe['precision']) == (True, 'fp32')  # ASIDModel's step: compiled
    assert recipe['optim_g'] == {'type': 'AdamW', 'lr': 5e-4, 'weight_decay': 1e-4, 'betas': [0.9, 0.999],
                                 'fused': True}  # the whole update in one kernel
    total = recipe['total_iter']
    assert recipe['scheduler'] == {'type': 'MultiStepLR', 'milestones': [total // 4, total // 2, total * 3 // 4],
                                   'gamma': 0.5}
    assert recipe['pixel_opt']['type'] == 'L1Loss'
    assert opt['val']['val_freq'] == 5000 and opt['logger']['save_checkpoint_freq'] == 5000
    assert opt['logger']['print_freq'] == 100 and opt['logger']['use_tb_logger'] is True
    for metric in ('psnr', 'ssim'):
        assert opt['val']['metrics'][metric] == {'type': f'calculate_{metric}', 'crop_border': scale,
                                                 'test_y_channel': True}


@pytest.mark.parametrize('name', sorted(n for n in os.listdir(OPTIONS) if n.startswith('train_')))
def test_every_train_file_computes_in_minus_one_to_one_and_states_the_measurement_that_chose_it(name):
    text = open(os.path.join(OPTIONS, name)).read()
    assert load(name)['network_g']['value_range'] == [-1, 1]
    assert ('validation PSNR after 100 / 200 iterations at the recipe\'s lr 5e-4: 28.56 / 29.34 dB in\n'
            '  # [-1, 1], 27.13 / 28.47 dB in [0, 1]') in text


@pytest.mark.parametrize('name', [n for n in TRAIN_FILES + FINETUNE_FILES if '_lmdb' not in n])
def test_in_memory_div2k_file_states_the_memory_its_sub_images_take(name):
    # prepare div2k's defaults (480 px crops every 240 px) make 32,208 sub-images of DIV2K's 800
    scale = file_facts(name)[2]
    hr, lr = 32208 * 480 * 480 * 3, 32208 * (480 // scale) ** 2 * 3
    text = open(os.path.join(OPTIONS, name)).read()
    assert (f'take {(hr + lr) / 1e9:.3g} GB at x{scale} (HR {hr / 1e9:.3g} GB + LR {lr / 1e9:.3g} GB) in each '
            f'training process') in text.replace('\n    # ', ' ')


@pytest.mark.parametrize('name', [n for n in TRAIN_FILES if n.endswith('_lmdb.yml')])
def test_lmdb_file_differs_from_its_disk_file_only_in_how_it_reads_div2k(name):
    lmdb, disk = load(name), load(name.replace('_lmdb', ''))
    for opt in (lmdb, disk):
        opt.pop('name')
        for key in ('type', 'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'filename_tmpl', 'io_backend'):
            opt['datasets']['train'].pop(key, None)
    assert lmdb == disk


@pytest.mark.parametrize('name', FINETUNE_FILES)
def test_finetune_file_is_its_phase_1_file_continued_from_phase_1_weights_at_lr_4e_4(name):
    """The release's second phase: phase 1's latest weights, lr 4e-4, twice phase 1's length."""
    finetune, phase1 = load(name), load(name.replace('_finetune', ''))
    assert finetune['name'] == phase1['name'] + '_finetune'
    assert finetune['path'] == {**phase1['path'], 'param_key_g': 'params',
                                'pretrain_network_g': f'experiments/{phase1["name"]}/models/net_g_latest.pth'}
    assert finetune['train']['optim_g'] == {**phase1['train']['optim_g'], 'lr': 4e-4}
    total = finetune['train']['total_iter']
    assert total == 2 * phase1['train']['total_iter']
    assert finetune['train']['scheduler']['milestones'] == [total // 4, total // 2, total * 3 // 4]
    for opt in (finetune, phase1):
        for key in ('name', 'path'):
            opt.pop(key)
        for key in ('optim_g', 'total_iter', 'scheduler'):
            opt['train'].pop(key)
    assert finetune == phase1


@pytest.mark.parametrize('name', TEST_FILES)
def test_test_file_evaluates_five_benchmarks_with_the_trained_checkpoint(name):
    opt = load(name)
    net, groups, scale, _ = file_facts(name)
    assert opt['name'] == name[:-4] and opt['model_type'] == 'ASIDModel' and opt['scale'] == scale
    sets = list(opt['datasets'].values())
    assert [d['name'] for d in sets] == BENCHMARKS
    for dataset in sets:
        assert (dataset['dataroot_gt'], dataset['dataroot_lq']) == prepare.benchmark_layout('datasets',
                                                                                            dataset['name'], scale)
    train = load(name.replace('test_', 'train_'))
    assert opt['network_g'] == train['network_g']
    assert opt['path']['pretrain_network_g'] == f'experiments/{train["name"]}/models/net_g_latest.pth'
    assert opt['path']['param_key_g'] == 'params'
    assert opt['val']['save_img'] is True
    assert 'tile' in opt['val'] and opt['val']['tile'] is None and opt['val']['tile_overlap'] == 24
    for metric in ('psnr', 'ssim'):
        assert opt['val']['metrics'][metric] == {'type': f'calculate_{metric}', 'crop_border': scale,
                                                 'test_y_channel': True}


# ------------------------------------------------------------------------------------------
# running them on stubs of the data sets
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def stub(tmp_path_factory):
    """A folder holding ``datasets/`` as the option files expect it, made by ``basicsr prepare``:
    DIV2K sub-images (disk and LMDB, x2/x3/x4) and the five benchmark sets, tiny."""
    root = tmp_path_factory.mktemp('stub')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        os.makedirs('src/DIV2K_train_HR')
        for i in range(2):  # one 264 px sub-image each: the largest patch (x4: 256 px) fits
            cv2.imwrite(f'src/DIV2K_train_HR/{i:04d}.png', make_image(264, 264, i))
        assert main(['prepare', 'div2k', '--input', 'src/DIV2K_train_HR', '--crop-size', '264', '--step', '264',
                     '--lmdb', '--workers', '1']) == 0
        for k, name in enumerate(BENCHMARKS):
            os.makedirs(f'src/{name}')
            cv2.imwrite(f'src/{name}/img{k}.png', make_image(38 + k, 41, k))  # not a multiple of any scale
        # one Urban100 image of 66x66 px at x4: larger than the authors' 64 px tiles
        cv2.imwrite('src/Urban100/big.png', make_image(264, 264, 7))
        for name in BENCHMARKS:
            assert main(['prepare', 'benchmark', '--input', f'src/{name}', '--workers', '1']) == 0
    return root


@pytest.mark.parametrize('name', TRAIN_FILES)
def test_train_file_trains_one_iteration_through_basicsr_train(name, stub, monkeypatch):
    monkeypatch.chdir(stub)
    net, groups, scale, lmdb = file_facts(name)
    assert main(['train', '-opt', os.path.join(OPTIONS, name), '--force_yml', *fast_train(scale)]) == 0
    run = stub / 'experiments' / name[:-4]
    assert (run / 'models' / 'net_g_latest.pth').is_file()
    log = open(max(glob.glob(str(run / f'train_{name[:-4]}_*.log')))).read()
    assert f'Network [{net}] is created.' in log
    assert 'Training statistics:\n\tNumber of train images: 2' in log
    assert 'End of training' in log
    assert 'Set5' in metrics_in(log)


@pytest.mark.parametrize('name', FINETUNE_FILES)
def test_finetune_file_trains_one_iteration_from_the_weights_phase_1_saved(name, stub, monkeypatch):
    monkeypatch.chdir(stub)
    opt = load(name)
    network = dict(opt['network_g'])
    net = ARCH_REGISTRY.get(network.pop('type'))(**network)
    weights = stub / opt['path']['pretrain_network_g']  # where phase 1 leaves its latest weights
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'params': net.state_dict()}, weights)
    assert main(['train', '-opt', os.path.join(OPTIONS, name), '--force_yml', *fast_train(file_facts(name)[2])]) == 0
    run = stub / 'experiments' / name[:-4]
    log = open(max(glob.glob(str(run / f'train_{name[:-4]}_*.log')))).read()
    assert (f'Loading {opt["network_g"]["type"]} model from {opt["path"]["pretrain_network_g"]}, '
            f'with param key: [params]') in log
    assert (run / 'models' / 'net_g_latest.pth').is_file() and 'Set5' in metrics_in(log)


def _checkpoint(stub, name, raw=False):
    """A freshly built network of the test file's network_g, saved as BasicSR saves it (or raw)."""
    opt = load(name)
    network = dict(opt['network_g'])
    net = ARCH_REGISTRY.get(network.pop('type'))(**network)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not only the initialisation
    path = stub / 'checkpoints' / f'{name[:-4]}{"_raw" if raw else ""}.pth'
    path.parent.mkdir(exist_ok=True)
    torch.save(net.state_dict() if raw else {'params': net.state_dict()}, path)
    return net, str(path)


def run_test(stub, name, checkpoint, *force_yml):
    assert main(['test', '-opt', os.path.join(OPTIONS, name), '--force_yml', f'path:pretrain_network_g={checkpoint}',
                 'num_gpu=0', *force_yml]) == 0
    run_name = next((f.split('=', 1)[1] for f in force_yml if f.startswith('name=')), name[:-4])
    run = stub / 'results' / run_name
    log = open(max(glob.glob(str(run / f'test_{run_name}_*.log')))).read()
    images = {os.path.relpath(p, run / 'visualization'): cv2.imread(p, cv2.IMREAD_UNCHANGED)
              for p in sorted(glob.glob(str(run / 'visualization' / '*' / '*.png')))}
    return log, images


@pytest.mark.parametrize('name', TEST_FILES)
def test_test_file_reports_psnr_on_five_sets_and_saves_the_sr_images(name, stub, monkeypatch):
    monkeypatch.chdir(stub)
    _, ckpt = _checkpoint(stub, name)
    log, images = run_test(stub, name, ckpt)
    assert set(metrics_in(log)) == set(BENCHMARKS)
    assert re.search(r'Validation Manga109\n\s+# psnr: [\d.]+.*\n\s+# ssim: [\d.]+', log)
    scale = file_facts(name)[2]
    gt = cv2.imread(str(stub / f'datasets/Urban100/GTmod{scale}/big.png'))
    assert images[f'Urban100/big_{name[:-4]}.png'].shape == gt.shape
    assert len(images) == 6


def test_test_file_runs_on_the_sets_that_are_prepared_and_ends_with_the_table_beside_bicubic(
        stub, tmp_path, monkeypatch, capsys):
    """Only Set5 and Set14 prepared: the others are skipped with one line each, and the table has
    the network's PSNR/SSIM beside MATLAB bicubic's from the same LR, as `prepare benchmark` measures it."""
    for name in ('Set5', 'Set14'):
        shutil.copytree(stub / 'datasets' / name, tmp_path / 'datasets' / name)
    monkeypatch.chdir(tmp_path)
    _, ckpt = _checkpoint(stub, 'test_ASID_x4.yml')
    log, _ = run_test(tmp_path, 'test_ASID_x4.yml', ckpt)
    skipped = [line for line in capsys.readouterr().err.splitlines() if 'skipping' in line]
    assert skipped == [f'basicsr test: skipping {name} (datasets.test_{i}): datasets/{name}/GTmod4 does not exist'
                       for i, name in ((3, 'B100'), (4, 'Urban100'), (5, 'Manga109'))]
    assert set(metrics_in(log)) == {'Set5', 'Set14'}
    run = tmp_path / 'results' / 'test_ASID_x4'
    table = (run / 'results.md').read_text()
    assert table.startswith('test_ASID_x4: ASID x4, whole images; Y channel, border 4; bicubic: MATLAB-compatible')
    assert table in log  # and logged, so printed
    assert '| set | images | ASID PSNR | bicubic PSNR | ASID SSIM | bicubic SSIM |' in table
    rows = list(csv.DictReader(open(run / 'results.csv')))
    assert [row['set'] for row in rows] == ['Set5', 'Set14']
    for row in rows:
        bicubic = prepare.bicubic_psnr(f'datasets/{row["set"]}/GTmod4', f'datasets/{row["set"]}/LRbicx4', 4)
        assert float(row['bicubic_psnr']) == pytest.approx(bicubic, abs=1e-6)
        assert float(row['ASID_psnr']) == pytest.approx(metrics_in(log)[row['set']], abs=1e-4)
        assert f'| {row["set"]} | 1 | {float(row["ASID_psnr"]):.2f} | {bicubic:.2f} |' in table
    # beside the table, a comparison image per set: its one image's crop, ground truth | bicubic | ASID
    assert ('crops beside bicubic: results/test_ASID_x4/compare_Set5.png, results/test_ASID_x4/compare_Set14.png'
            in log)
    for name in ('Set5', 'Set14'):
        sheet = cv2.imread(str(run / f'compare_{name}.png'))
        assert sheet.shape[1] > 2 * sheet.shape[0]  # one row of three panels


def test_test_file_with_no_set_prepared_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(['test', '-opt', os.path.join(OPTIONS, 'test_ASID_x4.yml'), '--force_yml',
                 'path:pretrain_network_g=~']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('basicsr test: error: ') and err.count('\n') == 0
    assert 'none of the test sets is prepared (Set5, Set14, B100, Urban100, Manga109)' in err


def _lq(stub, scale, dataset, image):
    lr = cv2.imread(str(stub / f'datasets/{dataset}/LRbicx{scale}/{image}.png')).astype(np.float32) / 255.
    return img2tensor(lr, bgr2rgb=True, float32=True).unsqueeze(0)


def _lq_of(stub, key, scale=4):
    """The LR input of a saved SR image 'Set5/img0_<name>.png'."""
    dataset, image = key.split('/')
    return _lq(stub, scale, dataset, image.rsplit('_', 1)[0])


def test_tile_64_runs_the_authors_tiled_protocol_on_every_image(stub, monkeypatch):
    """Every SR image is the authors' loop (tiled_forward): square LR images within one tile come out
    as whole images, the others in squares of their shorter side, the big one in 4 tiles."""
    monkeypatch.chdir(stub)
    name = 'test_ASID_x4.yml'
    net, ckpt = _checkpoint(stub, name)
    _, whole = run_test(stub, name, ckpt, 'name=whole')
    log, tiled = run_test(stub, name, ckpt, 'name=tiled', 'val:tile=64')
    assert set(metrics_in(log)) == set(BENCHMARKS)
    assert (stub / 'results/tiled/results.md').read_text().startswith(
        'tiled: ASID x4, tiles of 64 px, overlap 24 px; Y channel, border 4')  # the table says how it ran
    renamed = {k.replace('_tiled.png', '_whole.png'): v for k, v in tiled.items()}
    assert renamed.keys() == whole.keys()
    net.eval()
    for key, img in renamed.items():
        lq = _lq_of(stub, key)
        with torch.no_grad():
            assert np.array_equal(img, tensor2img(tiled_forward(net, lq, 4, 64, 24))), key
        h, w = lq.shape[-2:]
        assert np.array_equal(img, whole[key]) == (h == w <= 64), (key, h, w)


def test_tile_at_least_the_image_size_gives_the_whole_image_output_for_square_images(stub, monkeypatch):
    """tile: 66 covers every LR image; as in the authors' tester, only the square ones (10x10, 66x66)
    are one tile, the 9x10 ones two 9x9 squares."""
    monkeypatch.chdir(stub)
    name = 'test_ASID_x4.yml'
    _, ckpt = _checkpoint(stub, name)
    _, whole = run_test(stub, name, ckpt, 'name=whole66')
    _, tiled = run_test(stub, name, ckpt, 'name=tile66', 'val:tile=66')  # Urban100's big LR is 66x66
    assert {k.replace('_tile66', '_whole66'): v for k, v in tiled.items()}.keys() == whole.keys()
    for key, img in tiled.items():
        h, w = _lq_of(stub, key).shape[-2:]
        assert np.array_equal(img, whole[key.replace('_tile66', '_whole66')]) == (h == w), (key, h, w)


def test_authors_release_format_loads_with_the_overrides_the_test_file_documents(stub, monkeypatch):
    """A raw state_dict trained on [-1, 1], as ours: only param_key_g ~, as the comment says."""
    monkeypatch.chdir(stub)
    name = 'test_ASID_x4.yml'
    assert '--force_yml path:pretrain_network_g=path/to/release_x4.pth path:param_key_g=~\n' in open(
        os.path.join(OPTIONS, name)).read()
    net, ckpt = _checkpoint(stub, name, raw=True)
    log, images = run_test(stub, name, ckpt, 'name=release', 'path:param_key_g=~')
    assert 'with param key: [None]' in log
    assert set(metrics_in(log)) == set(BENCHMARKS)
    assert "'value_range': [-1, 1]" in log or 'value_range: [-1, 1]' in log


def test_demo_file_trains_on_what_prepare_demo_writes(tmp_path, monkeypatch, demo_datasets):
    """The README's main job, shortened to two iterations."""
    monkeypatch.chdir(tmp_path)
    os.symlink(demo_datasets[0] / 'datasets', tmp_path / 'datasets')  # what `basicsr prepare demo` wrote here
    assert main(['train', '-opt', os.path.join(OPTIONS, 'train_ASID_x4_demo.yml'), '--force_yml',
                 'train:total_iter=2', 'val:val_freq=2', 'logger:save_checkpoint_freq=2', 'num_gpu=0']) == 0
    log = open(glob.glob(str(tmp_path / 'experiments/train_ASID_x4_demo/train_*.log'))[0]).read()
    assert 'Number of train images: 291\n\tDataset enlarge ratio: 10' in log
    assert 'demo_val' in metrics_in(log)


def test_demo_test_file_tests_the_demo_model_on_the_demo_photographs(tmp_path, monkeypatch, demo_datasets):
    """`basicsr test -opt options/test_ASID_x4_demo.yml` after the demo: its table, beside bicubic."""
    monkeypatch.chdir(tmp_path)
    os.symlink(demo_datasets[0] / 'datasets', tmp_path / 'datasets')
    models = tmp_path / 'experiments/train_ASID_x4_demo/models'
    models.mkdir(parents=True)
    torch.save({'params': ASID(upscale=4, value_range=(-1, 1)).state_dict()}, models / 'net_g_latest.pth')
    assert main(['test', '-opt', os.path.join(OPTIONS, 'test_ASID_x4_demo.yml'), '--force_yml', 'num_gpu=0']) == 0
    table = (tmp_path / 'results/test_ASID_x4_demo/results.md').read_text()
    assert re.search(r'\| demo_val \| 3 \| [\d.]+ \| 29\.53 \|', table), table


def test_bsds200_gpu_file_trains_one_iteration_on_a_cpu_with_its_gpu_switches_overridden(stub, monkeypatch):
    """options/train_ASID_x4_BSDS200.yml (the short GPU run) reads what `prepare benchmark` writes."""
    monkeypatch.chdir(stub)
    if not os.path.isdir('datasets/BSDS200'):
        os.makedirs('src/BSDS200')
        for i in range(2):
            cv2.imwrite(f'src/BSDS200/{i}.png', make_image(264, 264, i))
        assert main(['prepare', 'benchmark', '--input', 'src/BSDS200', '--scales', '4', '--workers', '1']) == 0
    cpu = ['train:precision=fp32', 'train:optim_g:fused=false',
           'datasets:train:persistent_workers=false']
    assert main(['train', '-opt', os.path.join(OPTIONS, 'train_ASID_x4_BSDS200.yml'), '--force_yml', *fast_train(4),
                 *cpu]) == 0
    log = open(max(glob.glob(str(stub / 'experiments/train_ASID_x4_BSDS200/train_*.log')))).read()
    assert 'End of training' in log and set(metrics_in(log)) == {'Set5', 'Set14'}
    assert 'InMemoryPairedImageDataset BSDS200: 2 pairs take ' in log  # decoded once, the memory stated first


@pytest.mark.parametrize('change, message', [
    (lambda o: o['network_g'].update(fast_path='compile_train'),
     'network_g.fast_path: moved to train: compile: true (model_type: ASIDModel); the network holds the '
     'architecture only'),
    (lambda o: o['network_g'].update(precision='bf16'), 'network_g.precision: moved to train: precision'),
    (lambda o: o.update(model_type='TiledSRModel'), 'model_type: TiledSRModel is now model_type: ASIDModel'),
    (lambda o: o.update(model_type='SRModel'), 'train.compile: only model_type: ASIDModel reads it (SRModel would '
                                               'train without it)'),
    (lambda o: o['train'].update(compile='yes'), "train.compile: must be true or false, got 'yes'"),
    (lambda o: o['train'].update(kernels='auto'), "train.kernels: must be true or false, got 'auto'"),
    (lambda o: o['train'].update(precision='fp8'), "train.precision: must be one of fp32, bf16, got 'fp8'"),
    (lambda o: o['train'].update(precision='fp16'), 'train.precision: fp16 would train without loss scaling (its '
                                                     'gradients can underflow): use bf16, or fp32'),
    (lambda o: o.update(num_gpu=2), 'train.compile: 2 GPUs without a launcher would be DataParallel, which cannot '
                                    'run a compiled step: launch torchrun --nproc_per_node=2 -m basicsr_ext train '
                                    '... --launcher pytorch (or pick one GPU with CUDA_VISIBLE_DEVICES=0)'),
])
def test_speed_switches_in_old_places_or_of_wrong_values_are_refused_in_one_line(change, message):
    opt = load('train_ASID_x4.yml')
    change(opt)
    with pytest.raises(OptionError) as err:
        check_options(opt, 'train_ASID_x4.yml')
    assert str(err.value).startswith('train_ASID_x4.yml: ' + message) and '\n' not in str(err.value)


def test_a_null_precision_is_fp32_for_the_check_as_for_the_model():
    opt = load('train_ASID_x4.yml')
    opt['train']['precision'] = None  # `precision: ~` in YAML
    with pytest.raises(OptionError) as err:  # past the precision check (to the missing data sets here)
        check_options(opt, 'train_ASID_x4.yml')
    assert 'train.precision' not in str(err.value) and 'does not exist' in str(err.value)


def test_a_compiled_step_on_several_gpus_is_fine_under_a_launcher_and_auto_counts_the_gpus(monkeypatch):
    opt = load('train_ASID_x4.yml')  # num_gpu: auto
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    with pytest.raises(OptionError, match='train.compile: 4 GPUs without a launcher'):
        check_options(opt, 'train_ASID_x4.yml')
    with pytest.raises(OptionError) as err:  # under torchrun: past this check (to the missing data sets here)
        check_options(opt, 'train_ASID_x4.yml', launcher='pytorch')
    assert 'train.compile' not in str(err.value) and 'does not exist' in str(err.value)


def test_more_torchrun_processes_on_a_host_than_its_gpus_is_one_line_not_an_nccl_failure(monkeypatch):
    # torchrun --nproc_per_node=2 on a one-GPU host: BasicSR would put both ranks on GPU 0, where
    # NCCL's set-up fails with a traceback from each rank
    opt = load('train_ASID_x4.yml')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    with pytest.raises(OptionError) as err:
        check_options(opt, 'train_ASID_x4.yml', launcher='pytorch')
    assert str(err.value) == ('--launcher pytorch: 2 processes on this host, but it has 1 GPU: start one process '
                              'per GPU (torchrun --nproc_per_node=1), or hide the GPUs (CUDA_VISIBLE_DEVICES=) to '
                              'run on the CPU')


@pytest.mark.parametrize('launch', ['one process a GPU', 'a GPU each by CUDA_VISIBLE_DEVICES', 'SLURM tasks'])
def test_launches_where_each_process_has_a_gpu_pass_the_launch_check(launch, monkeypatch):
    opt = load('train_ASID_x4.yml')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '1' if launch == 'one process a GPU' else '2')
    if launch == 'a GPU each by CUDA_VISIBLE_DEVICES':  # a wrapper sets it per rank
        monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '1')
    launcher = 'slurm' if launch == 'SLURM tasks' else 'pytorch'  # SLURM may show a task its own GPU
    if launcher == 'slurm':
        monkeypatch.delenv('LOCAL_WORLD_SIZE')
        monkeypatch.setenv('SLURM_NTASKS_PER_NODE', '2')
    with pytest.raises(OptionError) as err:  # past the launch check, to the missing data sets here
        check_options(opt, 'train_ASID_x4.yml', launcher=launcher)
    assert 'does not exist' in str(err.value)


# ------------------------------------------------------------------------------------------
# values BasicSR would trip over after making the experiment folder (issue 24, case 8)
# ------------------------------------------------------------------------------------------
BAD_RUN_VALUES = {
    'datasets:train:gt_size=30': 'datasets.train.gt_size: 30 is not a multiple of scale 4 (the LR patch is '
                                 'gt_size / scale)',
    'datasets:train:gt_size=0': 'datasets.train.gt_size: must be a positive integer, got 0',
    'logger:save_checkpoint_freq=0': 'logger.save_checkpoint_freq: must be a positive integer, got 0',
    'val:val_freq=0': 'val.val_freq: must be a positive integer, got 0',
    'train:optim_g:lr=-1': 'train.optim_g.lr: must be a positive number, got -1',
    'train:optim_g:lr=0': 'train.optim_g.lr: must be a positive number, got 0',
    'train:optim_g:type=Adamm': "train.optim_g.type: 'Adamm' is not an optimizer BasicSR knows (known: Adam, AdamW, "
                                'Adamax, SGD, ASGD, RMSprop, Rprop)',
    'train:optim_g:betas=[0.9,2]': 'train.optim_g: AdamW: Invalid beta parameter at index 1: 2',
    'train:scheduler:milestones=[100,abc]': "train.scheduler.milestones: must be whole iteration numbers, got 'abc' "
                                            "in [100, 'abc']",
    'train:scheduler:milestones=[8,4]': 'train.scheduler.milestones: must increase, got [8, 4]',
    'num_gpu=-1': "num_gpu: must be 'auto' or a whole number of GPUs, got -1",
}


@pytest.mark.parametrize('entry', BAD_RUN_VALUES)
def test_training_value_basicsr_trips_over_later_is_one_line_before_the_experiment_folder(
        entry, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt_file = write_options(tmp_path / 'v.yml', tiny_options(tiny_data, name='v'))
    assert main(['train', '-opt', opt_file, '--force_yml', entry]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'basicsr train: error: {opt_file}: {BAD_RUN_VALUES[entry]}'
    assert not (tmp_path / 'experiments').exists()


def _renamed(options, section, old, new):
    node = options[section] if section else options
    node[new] = node.pop(old)
    return options


MISTAKES = {  # a mistake in an option file: the one line that names it
    'a misspelt key (the run would train from scratch)':
        (lambda o: _renamed(o, 'path', 'pretrain_network_g', 'pretrain_netwrok_g'),
         'path.pretrain_netwrok_g: not an option BasicSR reads; did you mean pretrain_network_g?'),
    'a misspelt section (the run would never validate)':
        (lambda o: _renamed(o, '', 'val', 'vall'), 'vall: not an option BasicSR reads; did you mean val?'),
    'a misspelt loss option': (lambda o: _renamed(o['train'], 'pixel_opt', 'loss_weight', 'loss_wieght'),
                               'train.pixel_opt.loss_wieght: not an option BasicSR reads; did you mean loss_weight?'),
    'a loss BasicSR does not have': (lambda o: o['train']['pixel_opt'].update(type='L1Los'),
                                     "train.pixel_opt.type: 'L1Los' is not a registered loss (known: "),
    'a metric BasicSR does not have (found at the first validation)':
        (lambda o: o['val']['metrics']['psnr'].update(type='calculate_psnrr'),
         "val.metrics.psnr.type: 'calculate_psnrr' is not a registered metric (known: "),
    'a scheduler BasicSR does not build': (lambda o: o['train']['scheduler'].update(type='MultiStepLRR'),
                                           "train.scheduler.type: 'MultiStepLRR' is not a scheduler BasicSR builds"),
    'no logger section': (lambda o: o.pop('logger'), 'missing option logger'),
    'no save_img': (lambda o: o['val'].pop('save_img'), 'missing option val.save_img'),
    'no flips named': (lambda o: o['datasets']['train'].pop('use_hflip'), 'missing option datasets.train.use_hflip'),
    'a batch size of 8.0': (lambda o: o['datasets']['train'].update(batch_size_per_gpu=8.0),
                            'datasets.train.batch_size_per_gpu: must be a positive integer, got 8.0'),
    'a scale of 4.0': (lambda o: o.update(scale=4.0), 'scale: must be a positive integer, got 4.0'),
}


@pytest.mark.parametrize('mistake', MISTAKES)
def test_a_mistake_basicsr_would_trip_over_later_or_never_is_one_line_before_the_run(
        mistake, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    change, message = MISTAKES[mistake]
    options = tiny_options(tiny_data, name='m')
    change(options)
    opt_file = write_options(tmp_path / 'm.yml', options)
    assert main(['train', '-opt', opt_file]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'basicsr train: error: {opt_file}: {message}') and '\n' not in err, err
    assert not (tmp_path / 'experiments').exists()


def test_a_folder_as_the_pretrained_checkpoint_is_named_as_a_folder(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt_file = write_options(tmp_path / 'm.yml', tiny_options(tiny_data, name='m'))
    assert main(['train', '-opt', opt_file, '--force_yml', f'path:pretrain_network_g={tmp_path}']) == 2
    assert f'path.pretrain_network_g: {tmp_path} is a folder, not a checkpoint file' in capsys.readouterr().err


def test_two_test_sets_of_one_name_are_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = tiny_options(tiny_data, name='m')
    options['datasets']['val_2'] = dict(options['datasets']['val'])
    opt_file = write_options(tmp_path / 'm.yml', options)
    assert main(['train', '-opt', opt_file]) == 2
    assert ("datasets.val_2.name: 'tiny_val' is also the name of datasets.val (results are kept by name)"
            in capsys.readouterr().err)


def test_more_gpus_than_the_machine_has_is_one_line_from_the_real_command(tiny_data, tmp_path):
    have = torch.cuda.device_count()
    opt_file = write_options(tmp_path / 'g.yml', {**tiny_options(tiny_data, name='g'), 'num_gpu': have + 1})
    result = run_basicsr('train', '-opt', opt_file, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f'basicsr train: error: {opt_file}: num_gpu: {have + 1}, but this machine has '
                                     f'{have} GPU{"" if have == 1 else "s"} ('
                                     f'{"num_gpu: 0 runs on the CPU" if have == 0 else f"num_gpu: auto takes all {have}"}'
                                     f'; --force_yml num_gpu={have} overrides it)')
    assert not (tmp_path / 'experiments').exists()


def test_milestones_beyond_total_iter_train_with_a_one_line_warning(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt_file = write_options(tmp_path / 'm.yml', tiny_options(tiny_data, name='m', total_iter=2, val_freq=100))
    assert main(['train', '-opt', opt_file, '--force_yml', 'train:scheduler:milestones=[1,3,40]']) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if 'warning' in line]
    assert warnings == [f'basicsr train: warning: {opt_file}: train.scheduler.milestones: 3, 40 beyond total_iter 2: '
                        f'the learning rate is never lowered there']


def test_a_missing_data_folder_of_the_shipped_layouts_names_the_command_that_writes_it(tmp_path, monkeypatch):
    import basicsr_ext.training.data  # noqa: F401  (registers the types the files name, as basicsr train does)
    import basicsr_ext.training.models  # noqa: F401
    from basicsr_ext.common.options import OptionError, load_and_check
    monkeypatch.chdir(tmp_path)  # relative paths are the current folder's: nothing prepared here
    for name, command in [('train_ASID_x4_demo.yml', 'basicsr prepare demo'),
                          ('train_ASID_x4.yml', 'basicsr prepare div2k --input ...'),
                          ('train_ASID_x4_BSDS200.yml', 'basicsr prepare benchmark --input ...'),
                          ('train_ASID_x4_realesrnet.yml', 'basicsr prepare realesrgan --input ...')]:
        with pytest.raises(OptionError, match=re.escape(f'does not exist ({command} writes it, under the current '
                                                        'folder)')):
            load_and_check(os.path.join(REPO, 'options', name))

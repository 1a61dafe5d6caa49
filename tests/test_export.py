"""basicsr export (ONNX with a parity check) and basicsr infer --onnx.

Small networks (16 features, 2 groups) keep the exports to a few seconds; the real ASID and
ASID-D8 are exported once each at their full size and checked on small inputs.
"""
import json
import os

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

from asid_arch import ASID, ASID_D8, ASIDUpsampler  # noqa: E402
from basicsr_ext.commands import export  # noqa: E402
from basicsr_ext.commands.export import DEFAULT_OPSET  # noqa: E402
from basicsr_ext.common import onnx_export  # noqa: E402
from basicsr_ext.commands.cli import main  # noqa: E402
from basicsr_ext.common.onnx_model import OnnxNetwork  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), 'data')


def small_asid(value_range=(0, 1), upscale=2, seed=0):
    torch.manual_seed(seed)
    return ASID(upscale=upscale, num_groups=2, num_feat=16, value_range=value_range).eval()


def release_state(manifest, seed=0):
    """Random weights in the exact key layout of an authors' release file."""
    shapes = json.load(open(os.path.join(DATA, manifest)))
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in shapes.items()}


@pytest.fixture(scope='module')
def small_checkpoint(tmp_path_factory):
    """A BasicSR-format checkpoint of a small x2 ASID computing in [-1, 1], as our runs save it."""
    path = tmp_path_factory.mktemp('ckpt') / 'net_g_small.pth'
    net = small_asid(value_range=(-1, 1))
    torch.save({'params': net.state_dict(), 'asid': {'type': 'ASID', 'value_range': [-1, 1]}}, path)
    return path


@pytest.fixture(scope='module')
def small_onnx(small_checkpoint, tmp_path_factory):
    from asid_arch.checkpoint import build_asid
    path = tmp_path_factory.mktemp('onnx') / 'small_x2.onnx'
    return onnx_export.export_onnx(build_asid(str(small_checkpoint)), str(path), opset=DEFAULT_OPSET)  # the command is tested below


def test_export_command_checks_parity_prints_cpu_times_and_keeps_the_file(small_checkpoint, tmp_path, capsys):
    out = tmp_path / 'again.onnx'
    assert main(['export', '--model-path', str(small_checkpoint), '-o', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'value range [-1, 1]' in text
    for shape in onnx_export.PARITY_SHAPES:
        assert f'parity {"x".join(map(str, shape))}: max |onnxruntime - pytorch| = ' in text
    assert 'cpu time 128x128: onnxruntime ' in text and ' ms, pytorch ' in text
    assert f'<= {onnx_export.TOLERANCE:g}' in text and out.is_file()
    assert os.listdir(tmp_path) == ['again.onnx']  # no temporary


def test_exported_graph_has_dynamic_batch_height_and_width(small_onnx):
    import onnx
    graph = onnx.load(str(small_onnx)).graph
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert dims[1].dim_value == 3
        assert all(d.dim_param and not d.dim_value for d in (dims[0], dims[2], dims[3]))


def test_onnx_matches_pytorch_on_batches_odd_sides_and_tiny_inputs(small_onnx):
    net = small_asid(value_range=(-1, 1))
    sess = onnx_export.session(small_onnx)
    shapes = ((2, 3, 37, 50), (1, 3, 7, 5), (3, 3, 1, 1), (1, 3, 16, 24), (1, 3, 9, 40))
    for shape, diff in onnx_export.parity(net, sess, shapes):
        assert diff < onnx_export.TOLERANCE, (shape, diff)
    out = sess.run(None, {'input': np.random.rand(2, 3, 37, 50).astype(np.float32)})[0]
    assert out.shape == (2, 3, 74, 100)


def test_export_records_scale_and_value_range_in_the_onnx_metadata(small_onnx):
    model = OnnxNetwork(small_onnx)
    assert (model.upscale, model.num_groups, model.num_feat, model.value_range) == (2, 2, 16, (-1, 1))


@pytest.mark.parametrize('manifest, groups', [('keys-asid-x4.json', 3), ('keys-asid_d8-x4.json', 8)])
def test_release_asid_and_asid_d8_export_within_tolerance(manifest, groups, tmp_path):
    from asid_arch.checkpoint import build_asid
    net = build_asid(release_state(manifest))
    assert (net.num_groups, net.upscale, net.value_range) == (groups, 4, (-1, 1))
    path = onnx_export.export_onnx(net, str(tmp_path / 'release.onnx'), opset=DEFAULT_OPSET)
    results = onnx_export.parity(net, onnx_export.session(path), ((2, 3, 19, 13), (1, 3, 4, 6)))
    assert all(diff < onnx_export.TOLERANCE for _, diff in results), results


def test_fp16_export_runs_with_float32_input_within_fp16_tolerance(tmp_path):
    net = small_asid()
    path = onnx_export.export_onnx(net, str(tmp_path / 'half.onnx'), opset=DEFAULT_OPSET, fp16=True)
    assert next(net.parameters()).dtype == torch.float32  # the caller's network is left in fp32
    results = onnx_export.parity(net, onnx_export.session(path), ((1, 3, 21, 18), ))
    assert all(diff < onnx_export.FP16_TOLERANCE for _, diff in results), results


def test_export_above_tolerance_fails_and_leaves_no_file(small_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(onnx_export, 'TOLERANCE', 0.0)  # any difference at all is too much
    monkeypatch.setattr(onnx_export, 'parity', lambda net, sess: [((1, 3, 7, 5), 1e-7)])
    out = tmp_path / 'bad.onnx'
    assert main(['export', '--model-path', str(small_checkpoint), '-o', str(out)]) == 1
    assert 'more than the tolerance 0' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_opset_below_the_lowest_that_works_is_one_line_naming_it_before_any_export(small_checkpoint, tmp_path,
                                                                                      capfd):
    out = tmp_path / 'old.onnx'
    assert main(['export', '--model-path', str(small_checkpoint), '-o', str(out), '--opset', '7']) == 2
    captured = capfd.readouterr()
    assert captured.out == '' and captured.err == (
        'basicsr export: error: --opset 7: ASID exports to ONNX opset 11 or later (its padding to a window multiple '
        'depends on the input size); the default is 17\n')
    assert os.listdir(tmp_path) == []


def test_the_lowest_opset_named_is_the_lowest_that_exports():
    net = small_asid()
    onnx_export.onnx_bytes(net, opset=export.MIN_OPSET)
    with pytest.raises(Exception, match='Pad'):
        onnx_export.onnx_bytes(net, opset=export.MIN_OPSET - 1)


def test_ctrl_c_during_export_is_one_line_and_writes_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    signum = signal.SIGINT
    checkpoint = tmp_path / 'net_g.pth'
    torch.save({'params': ASID(upscale=4).state_dict()}, checkpoint)  # full size: the export takes a while
    (tmp_path / 'out').mkdir()
    process = subprocess.Popen([sys.executable, '-m', 'basicsr_ext', 'export', '--model-path', str(checkpoint),
                                '-o', str(tmp_path / 'out' / 'x4.onnx')], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    assert '-> ' in process.stdout.readline()  # exporting now
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert err == f'basicsr export: stopped by {signal.Signals(signum).name}\n'
    assert os.listdir(tmp_path / 'out') == []


def test_export_refuses_an_existing_output_and_an_unusable_checkpoint(small_onnx, tmp_path, capsys):
    assert main(['export', '--model-path', str(tmp_path / 'missing.pth'), '-o', str(small_onnx)]) == 2
    assert 'exists (use --overwrite' in capsys.readouterr().err
    assert main(['export', '--model-path', str(tmp_path / 'missing.pth'), '-o', str(tmp_path / 'x.onnx')]) == 2
    assert 'checkpoint file not found' in capsys.readouterr().err
    for folder in (str(tmp_path), str(tmp_path / 'new') + os.sep):  # an existing folder, or one meant as a folder
        for extra in ([], ['--overwrite']):
            assert main(['export', '--model-path', str(tmp_path / 'missing.pth'), '-o', folder, *extra]) == 2
            assert 'is a folder: name the .onnx file to write' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# basicsr infer --onnx
# ----------------------------------------------------------------------------------------
def test_infer_onnx_gives_the_checkpoints_image_with_alpha_16_bit_and_tiles(small_onnx, small_checkpoint, tmp_path,
                                                                            capsys):
    rng = np.random.default_rng(0)
    src = (rng.random((30, 41, 4)) * 65535).astype(np.uint16)  # BGRA, 16-bit, alpha not constant
    cv2.imwrite(str(tmp_path / 'a.png'), src)
    args = ['-i', str(tmp_path / 'a.png'), '--tile', '24', '--tile-overlap', '8']
    assert main(['infer', *args, '-o', str(tmp_path / 'onnx'), '--onnx', str(small_onnx)]) == 0
    assert 'tiles of 24 px' in capsys.readouterr().err
    assert main(['infer', *args, '-o', str(tmp_path / 'torch'), '--model-path', str(small_checkpoint)]) == 0
    got = cv2.imread(str(tmp_path / 'onnx' / 'a_ASID_x2.png'), cv2.IMREAD_UNCHANGED)
    want = cv2.imread(str(tmp_path / 'torch' / 'a_ASID_x2.png'), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.shape == (60, 82, 4)
    assert np.abs(got.astype(np.int64) - want).max() <= 2  # of 65535


def test_onnx_network_in_the_upsampler_matches_the_pytorch_network(small_onnx):
    img = (np.random.default_rng(1).random((11, 9, 3)) * 255).astype(np.uint8)
    got = ASIDUpsampler(OnnxNetwork(small_onnx), device='cpu').upscale(img)
    want = ASIDUpsampler(small_asid(value_range=(-1, 1)), device='cpu').upscale(img)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_infer_onnx_refuses_options_that_do_not_apply_and_bad_files(small_onnx, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    base = ['infer', '-i', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out')]
    assert main([*base, '--onnx', str(small_onnx), '--device', 'cuda']) == 2
    assert '--device cuda does not apply to --onnx' in capsys.readouterr().err
    (tmp_path / 'junk.onnx').write_bytes(b'not a model')
    assert main([*base, '--onnx', str(tmp_path / 'junk.onnx')]) == 2
    assert 'not a usable ONNX model' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --onnx and --model-path are exclusive
        main([*base, '--onnx', str(small_onnx), '--model-path', 'x.pth'])


def test_an_onnx_file_given_as_a_checkpoint_points_to_the_onnx_option(small_onnx, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    assert main(['infer', '-i', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out'), '--model-path',
                 str(small_onnx)]) == 2
    assert capsys.readouterr().err == (f'basicsr infer: error: --model-path {small_onnx}: an ONNX model; run it with '
                                       f'--onnx {small_onnx}\n')

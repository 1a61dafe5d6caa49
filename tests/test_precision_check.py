"""``python -m basicsr_ext.commands.precision_check``: PSNR and speed per precision, and the recommendation."""
import json

import cv2
import numpy as np

from basicsr_ext.commands import precision_check


def test_precision_check_reports_every_run_and_recommends_one_within_tolerance(tmp_path, capsys):
    hr = tmp_path / 'hr'
    hr.mkdir()
    y, x = np.mgrid[0:34, 0:30].astype(np.float32)
    for i in range(2):
        img = np.stack([0.5 + 0.4 * np.sin(x / (3 + i + c) + y / 7) for c in range(3)], -1)
        cv2.imwrite(str(hr / f'{i}.png'), (img * 255).astype(np.uint8))
    (hr / 'notes.txt').write_text('skipped')
    code = precision_check.main(['--hr-dir', str(hr), '--num-groups', '1', '--device', 'cpu', '--train-steps', '2',
                                 '--precisions', 'fp32', 'bf16', '--modes', 'cast', 'amp', '--bench-size', '8',
                                 '--repeats', '1', '--tolerance', '100', '--json', str(tmp_path / 'r.json')])
    assert code == 0
    out = capsys.readouterr().out
    assert 'trained 2 steps' in out and 'fastest within 100.0 dB of fp32:' in out
    result = json.load(open(tmp_path / 'r.json'))
    assert [(r['precision'], r['mode']) for r in result['rows']] == [('fp32', 'fp32'), ('bf16', 'cast'),
                                                                    ('bf16', 'amp')]
    assert result['rows'][0]['delta'] == 0 and all(r['finite'] for r in result['rows'])
    assert set(result['rows'][0]['per_image']) == {'0.png', '1.png'}  # HR cropped to 32x28, LR 8x7
    fastest = min(result['rows'], key=lambda r: r['seconds'])
    assert result['best'] == {'precision': fastest['precision'], 'mode': fastest['mode']}


def test_the_compiled_fast_path_gets_a_row_of_its_own_on_tiles(tmp_path, capsys, monkeypatch):
    from conftest import compile_with_backend
    calls = compile_with_backend(monkeypatch, 'eager')  # the wiring; Inductor's code is tested in test_fast_path
    hr = tmp_path / 'hr'
    hr.mkdir()
    cv2.imwrite(str(hr / 'a.png'), np.random.default_rng(0).integers(0, 256, (160, 192, 3), np.uint8))
    assert precision_check.main(['--hr-dir', str(hr), '--num-groups', '1', '--device', 'cpu', '--precisions', 'fp32',
                                 'bf16', '--modes', 'compile', '--tile', '32', '--bench-size', '0',
                                 '--json', str(tmp_path / 'r.json')]) == 0
    rows = json.load(open(tmp_path / 'r.json'))['rows']
    assert [(r['precision'], r['mode']) for r in rows] == [('fp32', 'fp32'), ('bf16', 'compile')]
    assert len(calls) == 1 and all(r['finite'] for r in rows)

"""``python -m basicsr_ext.precision_check``: PSNR and speed per precision, and the recommendation."""
import json

import cv2
import numpy as np

from basicsr_ext import precision_check


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

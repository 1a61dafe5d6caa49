"""The figures of a test or validation run: the network's PSNR/SSIM beside bicubic's, per set.

:class:`basicsr_ext.training.models.ASIDModel` scores bicubic upscaling of the same LR images with
the same metric options (BasicSR's ``calculate_metric``: Y channel, border = scale in our
option files), so every validation says how far the network is above the papers' "Bicubic"
row; at the end of ``basicsr test`` it writes the table of all sets as Markdown and CSV.
"""
import csv
import io
import os

from basicsr.metrics import calculate_metric
from basicsr.utils import tensor2img

from basicsr_ext.common.files import write_file
from basicsr_ext.common.images import bicubic_upscale


def bicubic_scores(dataset, metrics, scale):
    """Mean of each metric over a paired dataset for MATLAB-bicubic upscaling of its LR images."""
    totals = dict.fromkeys(metrics, 0.)
    for i in range(len(dataset)):
        item = dataset[i]
        data = {'img': bicubic_upscale(tensor2img(item['lq']), scale), 'img2': tensor2img(item['gt'])}
        for name, metric_opt in metrics.items():
            totals[name] += calculate_metric(data, metric_opt)
    return {name: total / len(dataset) for name, total in totals.items()}


def _label(name, metric_opt):
    return {'calculate_psnr': 'PSNR', 'calculate_ssim': 'SSIM'}.get(metric_opt.get('type'), name)


def _fmt(value, metric_opt):
    return f'{value:.2f}' if metric_opt.get('type') == 'calculate_psnr' else f'{value:.4f}'


def compare(scores, bicubic, metrics):
    """'PSNR 29.97 (bicubic 29.53), SSIM 0.8400 (bicubic 0.8300)' for a log line."""
    return ', '.join(f'{_label(k, m)} {_fmt(scores[k], m)} ({"bicubic " + _fmt(bicubic[k], m)})'
                     for k, m in metrics.items())


def describe_metrics(metrics):
    """'Y channel, border 4' from the metric options (the ones of the first metric)."""
    first = next(iter(metrics.values()), {})
    channel = 'Y channel' if first.get('test_y_channel') else 'RGB'
    return f'{channel}, border {first.get("crop_border", 0)}'


def markdown_table(rows, network, metrics):
    """A Markdown table: a row per set, the network's and bicubic's figures side by side per metric."""
    header = ['set', 'images']
    for name, metric_opt in metrics.items():
        header += [f'{network} {_label(name, metric_opt)}', f'bicubic {_label(name, metric_opt)}']
    lines = ['| ' + ' | '.join(header) + ' |', '| --- | ' + ' | '.join(['---:'] * (len(header) - 1)) + ' |']
    for row in rows:
        cells = [row['set'], str(row['images'])]
        for name, metric_opt in metrics.items():
            cells += [_fmt(row['network'][name], metric_opt), _fmt(row['bicubic'][name], metric_opt)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_tables(folder, title, rows, network, metrics):
    """``results.md`` (title and table) and ``results.csv`` in ``folder``, each written atomically; their paths."""
    os.makedirs(folder, exist_ok=True)
    md_path, csv_path = os.path.join(folder, 'results.md'), os.path.join(folder, 'results.csv')
    write_file(md_path, f'{title}\n\n{markdown_table(rows, network, metrics)}\n'.encode('utf-8'))
    table = io.StringIO(newline='')
    writer = csv.writer(table)
    writer.writerow(['set', 'images'] + [f'{who}_{name}' for name in metrics for who in (network, 'bicubic')])
    for row in rows:
        writer.writerow([row['set'], row['images']] + [f'{row[who][name]:.6f}' for name in metrics
                                                       for who in ('network', 'bicubic')])
    write_file(csv_path, table.getvalue().encode('utf-8'))
    return md_path, csv_path

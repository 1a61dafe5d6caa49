"""Comparison images: which crops a test set's sheet shows, and what its panels hold."""
import cv2
import numpy as np
from basicsr.metrics import calculate_psnr

from basicsr_ext.common import compare
from basicsr_ext.common.images import bicubic_upscale
from conftest import make_image


def _pair(h=64, w=80, seed=0):
    gt = make_image(h, w, seed)
    gt[::3, ::2] = 255 - gt[::3, ::2]  # detail bicubic cannot bring back
    lq = cv2.resize(gt, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    return lq, gt


def test_best_crop_is_where_the_output_gains_most_over_bicubic():
    lq, gt = _pair()
    bicubic = bicubic_upscale(lq, 4)
    output = bicubic.copy()
    output[20:52, 36:68] = gt[20:52, 36:68]  # the network is perfect here only
    gain, top, left, size = compare.best_crop(output, bicubic, gt, size=32, border=4)
    assert (top, left, size) == (20, 36, 32) and gain > 0
    # nowhere better: the first window inside the border
    assert compare.best_crop(bicubic, bicubic, gt, size=32, border=4) == (0., 4, 4, 32)
    assert compare.best_crop(output, bicubic, gt, size=96, border=4)[3] == 56  # the image is smaller


def test_sheet_shows_the_images_of_the_largest_gains_first_labelled_with_basicsr_psnr_of_the_crops(monkeypatch):
    monkeypatch.setattr(compare, 'SHEET_ROWS', 2)
    psnr = {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}
    sheet = compare.ComparisonSheet('ASID', psnr, 4)
    labels = []
    monkeypatch.setattr(compare, 'labelled', lambda img, text: labels.append(text) or img)
    rows = {}
    for name, quality in (('worst', 0.1), ('best', 0.9), ('middle', 0.5)):
        lq, gt = _pair(seed=len(rows))
        bicubic = bicubic_upscale(lq, 4)
        output = np.round(bicubic * (1 - quality) + gt * quality).astype(np.uint8)
        sheet.add(name, lq, output, gt)
        rows[name] = (gt, bicubic, output)
    image = sheet.image()
    zoom, size = compare.ZOOM, 56  # the crop: at most 96 px, inside the 4 px border of 64 px
    assert image.shape == (2 * size * zoom + compare.GAP, 3 * size * zoom + 2 * compare.GAP, 3)
    # the two best rows, best first: its ground truth crop, zoomed, is the first panel
    gt, bicubic, output = rows['best']
    _, top, left, _ = compare.best_crop(output, bicubic, gt, 96, 4)
    crop = gt[top:top + size, left:left + size]
    assert np.array_equal(image[:size * zoom, :size * zoom], cv2.resize(crop, None, fx=zoom, fy=zoom,
                                                                        interpolation=cv2.INTER_NEAREST))
    expected = calculate_psnr(output[top:top + size, left:left + size], crop, crop_border=0, test_y_channel=True)
    assert f'ASID {expected:.2f} dB' in labels and 'best GT' in labels
    assert compare.ComparisonSheet('ASID', psnr, 4).image() is None


def test_a_label_longer_than_its_panel_is_cut_not_drawn_past_it():
    panel = compare.labelled(np.zeros((10, 40, 3), np.uint8), 'a very long image name GT')
    assert panel.shape == (compare.BAR + 10, 40, 3)

"""Results you can look at: crops of the ground truth, bicubic and the network side by side.

``basicsr test`` (:class:`basicsr_ext.training.models.ASIDModel`) writes one sheet per test set
beside its results table, ``results/<name>/compare_<set>.png``: for each of the
:data:`SHEET_ROWS` images where the network gains most over bicubic, the crop of
:data:`CROP` HR px where it gains most, as ground truth | bicubic | network, each labelled with
its PSNR on the crop (BasicSR's ``calculate_psnr`` with the test's metric settings), shown
:data:`ZOOM` times larger (nearest neighbour, so pixels stay pixels). The crops are picked by
the figures alone, so the same weights and data give the same sheet.

``basicsr infer --compare`` writes, per image, input (nearest neighbour) | bicubic | network
at the output size (:func:`input_bicubic_output`).

Plain OpenCV and NumPy; bicubic is MATLAB's (BasicSR's ``imresize``), as in the tables.
"""
import heapq

import cv2
import numpy as np

from basicsr_ext.common.images import bicubic_upscale

#: HR side of a crop, how much larger crops are shown, and how many images a sheet shows.
CROP, ZOOM, SHEET_ROWS = 96, 2, 4
#: The label bar above each panel, and the gap between panels.
BAR, GAP = 22, 6
FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.5
BACKGROUND = (255, 255, 255)


def labelled(img, text):
    """``img`` (uint8 BGR) under a black bar holding ``text`` in white, cut to the panel's width."""
    bar = np.zeros((BAR, img.shape[1], 3), np.uint8)
    while text and cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0] > img.shape[1] - 8:
        text = text[:-2] + '~' if len(text) > 2 else ''
    cv2.putText(bar, text, (4, BAR - 7), FONT, FONT_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


def _joined(panels, axis):
    """Panels (uint8 BGR) joined along ``axis``, :data:`GAP` px apart on white, each padded with white
    across it (at the bottom of a row, at the right of a column) to the largest."""
    across = 1 - axis
    size = max(p.shape[across] for p in panels)
    out = []
    for i, panel in enumerate(panels):
        if i:
            gap = [0, 0, 3]
            gap[axis], gap[across] = GAP, size
            out.append(np.full(gap, BACKGROUND, np.uint8))
        pad = list(panel.shape)
        pad[across] = size - panel.shape[across]
        out.append(np.concatenate([panel, np.full(pad, BACKGROUND, np.uint8)], axis=across))
    return np.concatenate(out, axis=axis)


def side_by_side(panels):
    """Panels (uint8 BGR, any sizes) in a row, top-aligned, :data:`GAP` px apart on white."""
    return _joined(panels, axis=1)


def stacked(rows):
    """Rows (uint8 BGR) one under the other, left-aligned, :data:`GAP` px apart on white."""
    return _joined(rows, axis=0)


def _squared_error_sums(a, b, size, step):
    """{(top, left): sum of squared differences over the size x size window} on a grid of ``step``."""
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    err = err.sum(axis=2) if err.ndim == 3 else err
    integral = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = err.shape
    tops = sorted(set(list(range(0, h - size + 1, step)) + [h - size]))
    lefts = sorted(set(list(range(0, w - size + 1, step)) + [w - size]))
    t, l = np.meshgrid(tops, lefts, indexing='ij')
    sums = integral[t + size, l + size] - integral[t, l + size] - integral[t + size, l] + integral[t, l]
    return t.ravel(), l.ravel(), sums.ravel()


def best_crop(output, bicubic, gt, size=CROP, border=0):
    """(gain, top, left, size): the window of ``size`` px (less in a smaller image), inside
    ``border``, where ``output`` is closest to ``gt`` relative to ``bicubic`` (the largest drop of
    the mean squared error); the first one on a tie."""
    h, w = gt.shape[:2]
    inner = (slice(border, h - border or None), slice(border, w - border or None))
    size = min(size, h - 2 * border, w - 2 * border)
    if size < 1:  # nothing inside the border: the whole image
        return 0., 0, 0, min(h, w)
    tops, lefts, net = _squared_error_sums(output[inner], gt[inner], size, max(1, size // 4))
    _, _, bic = _squared_error_sums(bicubic[inner], gt[inner], size, max(1, size // 4))
    i = int(np.argmax(bic - net))
    return float(bic[i] - net[i]) / (size * size), int(tops[i]) + border, int(lefts[i]) + border, size


class ComparisonSheet:
    """The crops of one test set, kept as images come (only the best :data:`SHEET_ROWS`).

    Args:
        network (str): name of the network in the labels.
        psnr (dict): BasicSR metric options of the PSNR to label crops with (``crop_border``,
            ``test_y_channel``); the crop border also keeps crops off the image border.
        scale (int): upscaling factor.
    """

    def __init__(self, network, psnr, scale):
        self.network, self.psnr, self.scale = network, dict(psnr or {}), scale
        self.rows = []  # heap of (gain, -order, row image): the smallest gain first
        self.count = 0

    def add(self, name, lq, output, gt):
        """One test image: its LR input, the network's output and the ground truth (uint8 BGR)."""
        from basicsr.metrics import calculate_psnr
        bicubic = bicubic_upscale(lq, self.scale)
        gain, top, left, size = best_crop(output, bicubic, gt, CROP, self.psnr.get('crop_border', 0))
        crops = [img[top:top + size, left:left + size] for img in (gt, bicubic, output)]
        y = self.psnr.get('test_y_channel', False)
        scores = [calculate_psnr(c, crops[0], crop_border=0, test_y_channel=y) for c in crops[1:]]
        zoomed = [cv2.resize(c, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_NEAREST) for c in crops]
        row = side_by_side([labelled(zoomed[0], f'{name} GT'), labelled(zoomed[1], f'bicubic {scores[0]:.2f} dB'),
                            labelled(zoomed[2], f'{self.network} {scores[1]:.2f} dB')])
        self.count += 1
        entry = (gain, -self.count, row)  # on equal gains the earlier image ranks higher
        if len(self.rows) < SHEET_ROWS:
            heapq.heappush(self.rows, entry)
        else:
            heapq.heappushpop(self.rows, entry)

    def image(self):
        """The sheet: the images of the largest gains first; None before any image."""
        if not self.rows:
            return None
        return stacked([row for _, _, row in sorted(self.rows, key=lambda e: (-e[0], -e[1]))])


def as_8bit_colour(img):
    """An image as ``basicsr infer`` reads it (8/16-bit or float; grey, grey + alpha, 3 or 4 channels) as uint8 with 3
    channels, in the order it has (the panels never reorder channels)."""
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(np.round(img * 255.), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 2:  # grey with alpha
        img = img[..., 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img[..., :3]


def input_bicubic_output(lq, output, network='ASID'):
    """Input (nearest neighbour), MATLAB bicubic and the network's output at the output's size, labelled."""
    lq, output = as_8bit_colour(lq), as_8bit_colour(output)
    scale = output.shape[0] // lq.shape[0]
    size = (output.shape[1], output.shape[0])
    nearest = cv2.resize(lq, size, interpolation=cv2.INTER_NEAREST)
    return side_by_side([labelled(nearest, f'input {lq.shape[1]}x{lq.shape[0]}'),
                         labelled(bicubic_upscale(lq, scale), f'bicubic x{scale}'),
                         labelled(output, f'{network} x{scale}')])

"""``TiledSRModel``: BasicSR's SRModel that tests as the ASID authors did and reports against bicubic.

Training is SRModel's; on top of it:

- Tiled testing. The ASID authors evaluated with 64x64 LR tiles overlapping by 24 px,
  averaging the overlaps. With::

      val:
        tile: 64          # LR tile size; leave out (or ~) to upscale whole images
        tile_overlap: 24

  BasicSR's validation and ``basicsr test`` run their loop (:func:`asid_arch.tiling.tiled_forward`).
- Bicubic beside the network. Every validation also scores MATLAB-bicubic upscaling of the
  same LR images with the same metrics (:mod:`basicsr_ext.results`) and logs both on one
  line; ``basicsr test`` ends with the table of all its sets, also written to
  ``results/<name>/results.md`` and ``results.csv``.
- A readable training terminal: the network's module tree goes to the log file only (one
  summary line on the terminal); training ends with where the latest model is and its
  validation figures against bicubic, without validating the same weights a second time.
"""
import logging
import os

import torch
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from asid_arch.tiling import tiled_forward
from basicsr_ext import results


@MODEL_REGISTRY.register()
class TiledSRModel(SRModel):
    """SRModel testing tile by tile when ``val.tile`` is set, and reporting bicubic beside the network."""

    def __init__(self, opt):
        self.figures = {}  # dataset name -> {'set', 'images', 'network', 'bicubic', 'iter'}
        self._bicubic = {}  # dataset name -> bicubic scores (they never change)
        self.last_iter = 0  # the last training iteration run
        super().__init__(opt)

    # ---------------------------------------------------------------------------- testing
    def tile_options(self):
        """(tile, overlap) from the ``val`` options, or None for whole-image inference."""
        val = self.opt.get('val') or {}
        tile = val.get('tile')
        if not tile:
            return None
        return int(tile), int(val.get('tile_overlap', 0) or 0)

    def test(self):
        tiling = self.tile_options()
        if tiling is None:
            return super().test()
        tile, overlap = tiling
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = tiled_forward(net, self.lq, self.opt['scale'], tile, overlap)
        if was_training and not hasattr(self, 'net_g_ema'):
            net.train()

    def network_name(self):
        return str(self.opt['network_g']['type']).replace('_', '-')

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        metrics = self.opt['val'].get('metrics')
        if not metrics:
            return
        name = dataloader.dataset.opt['name']
        if name not in self._bicubic:
            self._bicubic[name] = results.bicubic_scores(dataloader.dataset, metrics, self.opt['scale'])
        self.figures[name] = {'set': name, 'images': len(dataloader.dataset), 'iter': current_iter,
                              'network': dict(self.metric_results), 'bicubic': self._bicubic[name]}
        logger = get_root_logger()
        logger.info(f'{name}: {self.network_name()} '
                    + results.compare(self.metric_results, self._bicubic[name], metrics))
        if not self.opt['is_train'] and len(self.figures) == len(self.opt['datasets']):
            self.report()

    def run_description(self):
        tiling = self.tile_options()
        if tiling is None:
            return 'whole images'
        return f'tiles of {tiling[0]} px, overlap {tiling[1]} px'

    def report(self):
        """Log the table of every tested set and write it under ``results/<name>/``."""
        metrics = self.opt['val']['metrics']
        network = self.network_name()
        title = (f'{self.opt["name"]}: {network} x{self.opt["scale"]}, {self.run_description()}; '
                 f'{results.describe_metrics(metrics)}; bicubic: MATLAB-compatible, from the same LR')
        rows = list(self.figures.values())
        paths = results.write_tables(self.opt['path']['results_root'], title, rows, network, metrics)
        get_root_logger().info(f'{title}\n\n{results.markdown_table(rows, network, metrics)}\n\n'
                               f'Written to {_shown(paths[0])} and {_shown(paths[1])}')

    # ---------------------------------------------------------------------------- training
    def print_network(self, net):
        """BasicSR logs the module tree (~590 lines for ASID) to the terminal; here it goes to the log file only."""
        bare = self.get_bare_model(net)
        params = sum(p.numel() for p in bare.parameters())
        logger = get_root_logger()
        logger.info(f'Network: {type(bare).__name__}, with parameters: {params:,d} (structure in the log file)')
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, str(bare), None, None)
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    def optimize_parameters(self, current_iter):
        self.last_iter = current_iter
        super().optimize_parameters(current_iter)

    def resume_training(self, resume_state):
        self.last_iter = resume_state['iter']
        super().resume_training(resume_state)

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        if current_iter == -1:  # BasicSR's train_pipeline: the latest model, after the last iteration
            self.saved_latest = os.path.join(self.opt['path']['models'], 'net_g_latest.pth')
            get_root_logger().info(f'Latest model (iteration {self.last_iter}): {_shown(self.saved_latest)}')

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """BasicSR's train_pipeline validates once more after saving the latest model, labelled with an
        iteration count past the end (one more per remaining epoch): the same weights as the last
        validation when that was at the last iteration. Here the end is validated only if it was not
        yet, under the true iteration, and then summed up."""
        if not getattr(self, 'saved_latest', None):
            return super().validation(dataloader, current_iter, tb_logger, save_img)
        name = dataloader.dataset.opt['name']
        if (self.figures.get(name) or {}).get('iter') != self.last_iter:
            super().validation(dataloader, self.last_iter, tb_logger, save_img)
        row = self.figures.get(name)
        if row is not None:
            get_root_logger().info(
                f'{_shown(self.saved_latest)}: {name} at iteration {self.last_iter}: {self.network_name()} '
                + results.compare(row['network'], row['bicubic'], self.opt['val']['metrics']))


def _shown(path):
    """``path`` relative to the current directory when it is below it (as users typed it)."""
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel

"""``TiledSRModel``: BasicSR's SRModel, testing tile by tile when the option file asks for it.

The ASID authors evaluated with 64x64 LR tiles overlapping by 24 px, averaging the overlaps.
With ``model_type: TiledSRModel`` and::

    val:
      tile: 64          # LR tile size; leave out (or ~) to upscale whole images
      tile_overlap: 24

BasicSR's validation and ``basicsr test`` run that protocol (:func:`asid_arch.tiling.tiled_forward`).
Without ``val.tile`` the model is exactly SRModel. Training is SRModel's in any case.
"""
import torch
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY

from asid_arch.tiling import tiled_forward


@MODEL_REGISTRY.register()
class TiledSRModel(SRModel):
    """SRModel whose ``test()`` upscales in overlapping tiles when ``val.tile`` is set."""

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

"""An exported ONNX model (``basicsr export``) run by ONNX Runtime, in the place of the network.

:class:`OnnxNetwork` is called like the PyTorch network ((N, 3, H, W) float in [0, 1] ->
(N, 3, H*s, W*s)), so :class:`asid_arch.inference.ASIDUpsampler` gives it the same image
handling as a checkpoint: alpha, greyscale, 16-bit, tiles. ``basicsr infer --onnx`` uses it.
The network's weights and code are not needed: the scale and sizes come from the metadata
that ``basicsr export`` writes into the file (or, for another x``s`` ONNX model with the
same interface, from running it once on a 16x16 input).
"""
import os

import numpy as np
import torch
from torch import nn

from basicsr_ext.common.onnx_export import METADATA_PREFIX, session


class OnnxError(ValueError):
    """An ONNX file that cannot be used, in one line naming it."""


class OnnxNetwork(nn.Module):
    """ONNX Runtime (CPU) session behind the interface of the network.

    Args:
        path (str | os.PathLike): the ``.onnx`` file.

    Attributes:
        upscale (int): the scale, read from the metadata or measured.
        num_groups, num_feat, value_range: from ``basicsr export``'s metadata, when present.
    """

    def __init__(self, path):
        super().__init__()
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise OnnxError("onnxruntime is not installed: pip install 'asid-basicsr[export]'") from None
        name = os.fspath(path)
        if not os.path.isfile(name):
            raise OnnxError(f'{name}: ONNX file not found')
        try:
            self.session = session(name)
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail...)
            first = str(e).strip().splitlines()
            raise OnnxError(f'{name}: not a usable ONNX model: {first[0] if first else type(e).__name__}') from None
        self.path = name
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise OnnxError(f'{name}: expected one (N, 3, H, W) input, found {[i.shape for i in inputs]}')
        self.input_name = inputs[0].name
        meta = {k[len(METADATA_PREFIX):]: v for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                if k.startswith(METADATA_PREFIX)}
        self.metadata = meta
        if 'upscale' in meta:
            self.upscale = int(meta['upscale'])
            self.num_groups, self.num_feat = int(meta['num_groups']), int(meta['num_feat'])
            self.value_range = tuple(int(v) for v in meta['value_range'].split(','))
        else:  # not written by basicsr export: measure the scale
            out = self._run(np.zeros((1, 3, 16, 16), np.float32))
            if out.shape[2] % 16 or out.shape[2] != out.shape[3]:
                raise OnnxError(f'{name}: a 16x16 input gives {tuple(out.shape)}: not an x s super-resolution model')
            self.upscale = out.shape[2] // 16

    def _run(self, array):
        return self.session.run(None, {self.input_name: array})[0]

    def forward(self, x):
        out = self._run(np.ascontiguousarray(x.detach().to('cpu', torch.float32).numpy()))
        return torch.from_numpy(out).to(x.device)

    def __repr__(self):
        return f'OnnxNetwork({self.path})'

"""ASID in spandrel's architecture registry (optional: ``pip install 'asid-basicsr[export]'``).

::

    import asid_arch.spandrel_arch   # adds ASID to spandrel.MAIN_REGISTRY (once)
    import spandrel
    model = spandrel.ModelLoader().load_from_file('ASID_x4.pth')   # an ImageModelDescriptor
    sr = model(lr)                   # (N, 3, H, W) in [0, 1] -> (N, 3, H*s, W*s)

Detection is by the state_dict keys every ASID has (:data:`DETECT_KEYS`); scale, group count,
width and window come from the shapes (:func:`asid_arch.checkpoint.infer_config`). Loads the
authors' release files (raw state_dicts) and BasicSR's / ours (``params`` / ``params_ema``,
which spandrel unwraps itself) with ``strict=True``.

Value range: spandrel hands an architecture the unwrapped state_dict only, so the ``asid``
metadata of our checkpoints (which records the range a run trained in) does not reach
:meth:`ASIDArch.load`. spandrel-loaded networks therefore compute in [-1, 1], as the authors'
release files need (their tag says so); for a checkpoint trained in [0, 1] use
:func:`load_file`, which reads the file's own record, or set ``descriptor.model.value_range``.
"""
import spandrel
from spandrel import ArchSupport, ImageModelDescriptor, ModelTiling
from spandrel.util import KeyCondition

from .asid_arch import ASID, ASID_D8
from .checkpoint import infer_config, read_file, saved_value_range, training_value_range

#: Keys whose presence marks an ASID state_dict (any scale and group count).
DETECT_KEYS = ('input.weight', 'input.bias', 'block0.residual_layer.0.LB1.net.fn.0.weight',
               'block0.residual_layer.0.SLA1.attn.to_qkv.weight', 'block0.residual_layer.0.BlockC.cttn1.qkv.weight',
               'block0.res_end.weight', 'block0.esa.conv1.weight', 'output.weight', 'up.0.weight')
#: Value range of a network loaded by spandrel (the authors' release; see the module docstring).
SPANDREL_VALUE_RANGE = (-1, 1)


class ASIDArch(spandrel.Architecture[ASID]):
    """spandrel's description of ASID / ASID-D8."""

    def __init__(self):
        super().__init__(id='ASID', detect=KeyCondition.has_all(*DETECT_KEYS))

    def load(self, state_dict):
        config = infer_config(state_dict, name='spandrel state_dict')
        cls = ASID_D8 if config['num_groups'] == 8 else ASID
        model = cls(value_range=SPANDREL_VALUE_RANGE, **config)
        model.load_state_dict(state_dict, strict=True)
        lo, hi = model.value_range
        return ImageModelDescriptor(
            model, state_dict, architecture=self, purpose='SR' if config['upscale'] > 1 else 'Restoration',
            tags=[f'{config["num_groups"]} groups', f'{config["num_feat"]}nf', f'w{model.window_size}',
                  f'value range [{lo}, {hi}]'],
            supports_half=True, supports_bfloat16=True, scale=config['upscale'], input_channels=3,
            output_channels=3, tiling=ModelTiling.SUPPORTED)


def register(registry=None):
    """Add :class:`ASIDArch` to ``registry`` (default: spandrel's ``MAIN_REGISTRY``); a second call
    does nothing. Returns the registry's entry for ASID."""
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    registry.add(ArchSupport.from_architecture(ASIDArch()), ignore_duplicates=True)
    return registry['ASID']


def load_file(path):
    """``spandrel.ModelLoader().load_from_file(path)``, with the value range the checkpoint records
    (our ``asid`` metadata, or the option file of its run) instead of :data:`SPANDREL_VALUE_RANGE`."""
    descriptor = spandrel.ModelLoader().load_from_file(path)
    if isinstance(descriptor.model, ASID):
        value_range = saved_value_range(read_file(path)) or training_value_range(path)
        if value_range is not None:
            descriptor.model.value_range = tuple(int(v) for v in value_range)
    return descriptor


__all__ = ['ASIDArch', 'DETECT_KEYS', 'SPANDREL_VALUE_RANGE', 'load_file', 'register']

register()

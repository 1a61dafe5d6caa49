"""ASID super-resolution network for BasicSR.

Importing this package registers ``ASID`` and ``ASID_D8`` in BasicSR's ``ARCH_REGISTRY``
(and, through :mod:`basicsr_ext.hook`, patches BasicSR for today's stack when it is imported).
"""
import basicsr_ext.hook  # noqa: F401  (must come first: BasicSR is patched as it is imported)

from .asid_arch import ASID, ASID_D8  # noqa: E402
from .checkpoint import CheckpointError, build_asid, infer_config, load_state_dict  # noqa: E402
from .inference import ASIDUpsampler  # noqa: E402

__all__ = ['ASID', 'ASID_D8', 'ASIDUpsampler', 'CheckpointError', 'load_state_dict', 'infer_config', 'build_asid']

import basicsr_ext  # noqa: F401  (patches BasicSR for today's stack before it is imported)
"""ASID super-resolution network for BasicSR.

Importing this package registers ``ASID`` and ``ASID_D8`` in BasicSR's ``ARCH_REGISTRY``.
"""
from .asid_arch import ASID, ASID_D8  # noqa: E402
from .checkpoint import CheckpointError, build_asid, infer_config, load_state_dict  # noqa: E402

__all__ = ['ASID', 'ASID_D8', 'CheckpointError', 'load_state_dict', 'infer_config', 'build_asid']

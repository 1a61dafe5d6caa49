"""ASID super-resolution network for BasicSR: the network, its checkpoint format and its adapters.

Importing this package registers ``ASID`` and ``ASID_D8`` in BasicSR's ``ARCH_REGISTRY``. It
imports nothing of :mod:`basicsr_ext`: BasicSR is patched for today's stack by the start-up hook
that installing the package puts in site-packages (:mod:`basicsr_ext.patches.hook`).
"""
from .asid_arch import ASID, ASID_D8
from .checkpoint import CheckpointError, build_asid, infer_config, load_state_dict
from .inference import ASIDUpsampler

__all__ = ['ASID', 'ASID_D8', 'ASIDUpsampler', 'CheckpointError', 'load_state_dict', 'infer_config', 'build_asid']

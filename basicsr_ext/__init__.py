"""Makes PyPI BasicSR 1.4.2 work on today's stack and registers ASID with it.

Importing this package (or ``asid_arch``) applies the patches in :mod:`basicsr_ext.compat`
before BasicSR itself is imported, then registers the ASID networks.
"""
from basicsr_ext import compat

compat.apply()

import asid_arch  # noqa: E402,F401  (registers ASID and ASID_D8 in ARCH_REGISTRY)
from basicsr_ext import models  # noqa: E402,F401  (registers TiledSRModel in MODEL_REGISTRY)

"""Makes PyPI BasicSR 1.4.2 work on today's stack, and the ``basicsr`` command.

Importing this package only installs :mod:`basicsr_ext.patches.hook`, which applies the patches in
:mod:`basicsr_ext.patches.compat` to BasicSR when a process imports it (installing the package makes
every interpreter do this at start-up). ``import asid_arch`` registers the ASID networks;
``import basicsr_ext.training.models`` registers ``ASIDModel``; the ``basicsr`` command does both.
"""
from basicsr_ext.patches import hook

hook.install()

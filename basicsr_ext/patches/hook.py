"""Applies the compatibility patches in every process that imports BasicSR.

PyPI BasicSR 1.4.2 cannot even be imported on today's stack until :mod:`basicsr_ext.patches.compat`
has run, and ``import basicsr`` happens where this package has no say: DataLoader workers that
``multiprocessing`` starts with ``spawn`` (BasicSR's ``init_dist`` sets it under DDP) or
``forkserver`` are fresh interpreters that import BasicSR to unpickle the data set, and a
user's script may import ``basicsr`` before ``asid_arch``. So the patches are tied to the
import itself: :func:`install` puts a finder first on ``sys.meta_path`` that, when ``basicsr``
is about to be imported, applies the import fixes, lets BasicSR's own loader run, then applies
the remaining patches. Installing the package adds ``asid_basicsr.pth`` to site-packages, one
line that calls :func:`install` when any interpreter starts; until ``basicsr`` is imported the
finder costs nothing (this module imports only the standard library).
"""
import importlib.abc
import importlib.util
import sys


class _PatchedLoader(importlib.abc.Loader):
    """BasicSR's own loader, followed by the patches that need BasicSR imported."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # leave no trace in the module
        self.loader.exec_module(module)
        from basicsr_ext.patches import compat
        compat.apply()


class BasicSRImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; on the first ``import basicsr`` it patches around the real import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'basicsr':
            return None
        uninstall()  # one shot: the real finders locate BasicSR below
        from basicsr_ext.patches import compat
        compat.apply_import_fixes()
        spec = importlib.util.find_spec('basicsr')
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchedLoader(spec.loader)
        return spec


def installed():
    """The hook instance on ``sys.meta_path``, or None."""
    return next((f for f in sys.meta_path if isinstance(f, BasicSRImportHook)), None)


def install():
    """Patch BasicSR when it is imported (now, if it already is)."""
    if 'basicsr' in sys.modules:
        from basicsr_ext.patches import compat
        compat.apply()
    elif installed() is None:
        sys.meta_path.insert(0, BasicSRImportHook())


def uninstall():
    hook = installed()
    if hook is not None:
        sys.meta_path.remove(hook)

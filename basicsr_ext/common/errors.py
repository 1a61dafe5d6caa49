"""The error every ``basicsr`` command raises for a user-facing failure.

In its own module so that the commands (``prepare``, ``infer``, ``benchmark``) and
:mod:`basicsr_ext.commands.cli`, which imports them, share it without importing each other.
"""


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""

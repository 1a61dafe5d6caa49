"""SIGINT and SIGTERM as one exception, for every ``basicsr`` command.

Ctrl-C sends SIGINT, and slurm (before it preempts a job), ``timeout``, ``kill`` and
``docker stop`` send SIGTERM. Python turns the first into a KeyboardInterrupt with a traceback
and dies silently on the second. Under :func:`raising_on_signals` both raise
:class:`Interrupted` in the main thread, once: later signals are noted and ignored, so that the
clean-up the first one started (removing a temporary, writing a summary) is not cut short. A
command reports it on one line and exits with :attr:`Interrupted.status` (128 + the signal's
number, what a shell reports for a process the signal killed: 130, 143).

A signal's exception can be lost: raised while Python runs a ``__del__`` or a weakref callback
(importlib's module locks have one), it is printed as "Exception ignored" and the command goes on.
Such a signal is remembered (:func:`raise_if_interrupted`): the atomic file writer checks before it
keeps a file, and the block raises it on the way out, so a lost Ctrl-C still stops the command
before it commits anything more.
"""
import contextlib
import signal
import sys
import threading

#: The signals a command stops on.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM; a KeyboardInterrupt, so that code handling Ctrl-C handles both."""

    def __init__(self, signum, summary=''):
        super().__init__(signum)
        self.signum = signum
        self.summary = summary  # what was done so far, for the one line; set on the way up

    @property
    def name(self):
        return signal.Signals(self.signum).name

    @property
    def status(self):
        """The exit status: 128 + the signal's number."""
        return 128 + self.signum


#: The signal whose Interrupted was swallowed (see the module docstring), or None.
_lost = None
#: How many :func:`raising_on_signals` blocks are open (``benchmark --train`` runs ``train`` inside one).
_depth = 0


def _raise_once(signum, frame):
    for s in SIGNALS:  # a second signal must not interrupt the clean-up of the first
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def _note_lost(hook):
    def unraisable(info):
        global _lost
        if isinstance(info.exc_value, Interrupted) and _lost is None:
            _lost = info.exc_value.signum
            if threading.current_thread() is threading.main_thread():
                for s in SIGNALS:  # no clean-up of it is under way: a next signal stops at once
                    signal.signal(s, _raise_once)
        hook(info)
    return unraisable


def raise_if_interrupted():
    """Raise :class:`Interrupted` for a signal whose exception was swallowed (once)."""
    global _lost
    if _lost is not None:
        signum, _lost = _lost, None
        raise Interrupted(signum)


@contextlib.contextmanager
def raising_on_signals():
    """SIGINT and SIGTERM raise :class:`Interrupted` (once) inside the block; the handlers before
    are restored after it. Does nothing outside the main thread (Python handles signals there only)."""
    global _depth, _lost
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_once) for s in SIGNALS}
    hook, sys.unraisablehook = sys.unraisablehook, _note_lost(sys.unraisablehook)
    _depth += 1
    try:
        yield
        raise_if_interrupted()
    finally:
        _depth -= 1
        if _depth == 0:
            _lost = None  # a lost signal belongs to its block: none is left for code after it
        sys.unraisablehook = hook
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def ignore_in_worker():
    """For worker processes of a pool that the main process stops: SIGINT (Ctrl-C reaches the whole
    process group) is the main process's to handle; SIGTERM (the pool's ``terminate``) ends the
    worker through SystemExit, so that a write under way removes its temporary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)

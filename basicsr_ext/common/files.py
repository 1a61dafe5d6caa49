"""Files written whole or not at all: the one atomic writer of the package.

Every file this package writes for users (checkpoints, training states, images of ``infer``
and ``prepare``, meta-info files, ONNX models, LMDB folders) goes through :func:`write_file` or
:func:`replace_folder`: the content goes to a temporary in the same folder, which is synced and
then renamed over the final name, so a reader sees the old file or the new one, never half of
one. The temporary is named ``.<name>.asid-tmp-<pid>``, a pattern no user file has: a save
killed with SIGKILL (or a power cut) leaves one behind, and :func:`remove_temporaries`, called
when the next run starts on that folder, removes those of processes no longer alive, and
nothing else.
"""
import contextlib
import errno
import os
import re
import shutil

from basicsr_ext.common.interrupts import raise_if_interrupted

#: What marks a temporary of this package: ``.<final name>.asid-tmp-<pid of its writer>``, with
#: ``.lmdb`` after it for an LMDB folder (BasicSR's LMDB writer insists on the ending).
TEMPORARY = re.compile(r'\..+\.asid-tmp-(\d+)(\.lmdb)?')


def shown(path):
    """``path`` relative to the current directory when it is below it (as users typed it)."""
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel


def temporary_path(path):
    """The name :func:`write_file` writes ``path``'s content under before renaming it."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f'.{name}.asid-tmp-{os.getpid()}')


def _remove(path):
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


@contextlib.contextmanager
def _removed_on_failure(tmp, path):
    """On any failure inside (Ctrl-C and signals too) ``tmp`` is removed, and an OSError is raised
    again naming ``path`` (those of a write name the temporary, or nothing)."""
    try:
        yield
    except BaseException as e:
        _remove(tmp)
        if not (isinstance(e, OSError) and e.errno is not None):
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), path) from None


def write_file(path, data=None, write=None, mode=0o666):
    """Write ``path`` atomically: from ``data`` (bytes), or by ``write(file)`` (a binary file object).

    The temporary gets the permissions of any new file (``mode`` less the umask; not
    ``mkstemp``'s private 0600). On any failure, Ctrl-C and signals included, the temporary is
    removed and ``path`` is as it was; an OSError names ``path`` (e.g. ``[Errno 28] No space
    left on device: 'out/x.png'``).

    Args:
        path (str): The final file name.
        data (bytes | None): The whole content; or None, and ``write`` writes it.
        write (callable | None): ``write(f)`` writes the content to the open binary file ``f``.
        mode (int): Permission bits of a new file, before the umask.
    """
    if (data is None) == (write is None):
        raise TypeError('write_file takes data or write, not both or neither')
    raise_if_interrupted()  # a Ctrl-C whose exception was lost: nothing more is written
    tmp = temporary_path(path)
    with _removed_on_failure(tmp, path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with open(fd, 'wb') as f:
            if data is not None:
                f.write(data)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        raise_if_interrupted()  # a Ctrl-C whose exception was lost: nothing more is kept
        os.replace(tmp, path)


def replace_folder(path, make, suffix=''):
    """Make the folder ``path`` atomically: ``make(tmp)`` fills a new temporary folder, which then
    takes ``path``'s place (an old folder there is removed first). On failure the temporary is
    removed and ``path`` is as it was. For LMDBs, which are folders.

    Args:
        path (str): The final folder.
        make (callable): ``make(folder)`` creates and fills ``folder`` (which does not exist yet).
        suffix (str): What the temporary folder's name ends with (``.lmdb`` for BasicSR's LMDB writer).
    """
    tmp = temporary_path(path) + suffix
    _remove(tmp)
    with _removed_on_failure(tmp, path):
        make(tmp)
        raise_if_interrupted()  # a Ctrl-C whose exception was lost: the old folder stays
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)


def pid_alive(pid):
    """Whether a process ``pid`` runs on this machine (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temporaries(folder, recursive=False):
    """Remove the temporaries :func:`write_file` / :func:`replace_folder` left in ``folder`` (and
    below it, if ``recursive``) when their process was killed; those of live processes stay.
    Returns the paths removed. A folder that does not exist has none."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for root, dirs, files in os.walk(folder):
        for name in list(files) + list(dirs):
            match = TEMPORARY.fullmatch(name)
            if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
                _remove(os.path.join(root, name))
                removed.append(os.path.join(root, name))
                if name in dirs:
                    dirs.remove(name)
        if not recursive:
            break
    return removed


def is_out_of_space(e):
    """Whether the OSError ``e`` says the disk (or the quota, or the file size limit) is full."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

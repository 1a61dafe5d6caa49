"""What this machine offers a training run: cores, GPUs of this host, memory, shared memory.

Used to size the data loader (``num_worker_per_gpu: auto``) and to check, before decoding, that
an in-memory data set fits (:mod:`basicsr_ext.training.data`, and the option checker before
BasicSR makes the experiment folder).
"""
import os

#: Most loader workers ``auto`` gives one GPU: in-memory samples are a crop and a flip, and even
#: PNG decoding kept one H200 fed with 14 (issue 23); more only take memory and start-up time.
AUTO_WORKER_CAP = 16
#: Share of MemAvailable an in-memory data set may take on a host: the rest is for the training
#: processes themselves (CUDA context, model, loader workers and their batches).
MEMORY_SHARE = 0.8


class NoRoomError(ValueError):
    """Decoded images would not fit in this machine's memory (one line naming the figures)."""


def usable_cores():
    """CPU cores this process may run on (its affinity: what ``taskset``, cgroups or SLURM give it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ranks_on_host(launcher='pytorch'):
    """Training processes on this host: torchrun's LOCAL_WORLD_SIZE, SLURM's tasks per node, else 1."""
    for variable in ('LOCAL_WORLD_SIZE', 'SLURM_NTASKS_PER_NODE') if launcher != 'none' else ():
        value = os.environ.get(variable, '').split('(')[0]  # SLURM may write "4(x2)"
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def auto_workers(cores, gpus_on_host, cap=AUTO_WORKER_CAP):
    """Loader workers for one GPU: its share of the cores less one for its training process.

    Args:
        cores (int): usable cores of the host (:func:`usable_cores`).
        gpus_on_host (int): GPUs (training processes) sharing them; 0 counts as 1 (a CPU run).
        cap (int): the most workers returned.

    Returns:
        int: 0 on a one-core machine (the main process loads), else between 1 and ``cap``.
    """
    if cores <= 1:
        return 0
    share = cores // max(1, gpus_on_host)
    return max(1, min(cap, share - 1))


def available_memory():
    """Memory available without swapping, in bytes, or None (:func:`asid_arch.runtime.host_available_memory`)."""
    from asid_arch.runtime import host_available_memory  # here: importing asid_arch imports torch and BasicSR
    return host_available_memory()


def shared_memory_free(path='/dev/shm'):
    """Free bytes of the shared-memory file system (PyTorch's shared tensors live there), or None."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def gb(n):
    """Bytes with three significant figures, in GB from 1 GB on (``23.6 GB``), else MB (``97.9 MB``)."""
    return f'{n / 1e9:.3g} GB' if n >= 1e9 else f'{n / 1e6:.3g} MB'


def check_fits(per_process, processes, what, alternatives):
    """Raise NoRoomError unless ``processes`` copies of ``per_process`` bytes fit this host.

    They must fit within :data:`MEMORY_SHARE` of MemAvailable and within the free space of
    /dev/shm (a container's default is 64 MB: ``docker run --shm-size``). Figures the system
    does not give are not checked.

    Args:
        per_process (int): bytes each process will hold.
        processes (int): processes of this host holding a copy.
        what (str): what needs the memory, starting the message.
        alternatives (str): what to use instead, ending the message.
    """
    need = per_process * processes
    copies = '' if processes == 1 else f' ({processes} processes x {gb(per_process)})'
    available, shm = available_memory(), shared_memory_free()
    if available is not None and need > MEMORY_SHARE * available:
        raise NoRoomError(f'{what} needs {gb(need)} of memory on this host{copies}, more than '
                          f'{MEMORY_SHARE:.0%} of the {gb(available)} available (MemAvailable); {alternatives}')
    if shm is not None and need > shm:
        raise NoRoomError(f'{what} needs {gb(need)} of shared memory on this host{copies}, but /dev/shm has '
                          f'{gb(shm)} free (in a container: docker run --shm-size); {alternatives}')


def describe_room():
    """``MemAvailable 120 GB, /dev/shm free 64 GB`` (the figures the system gives)."""
    parts = []
    if available_memory() is not None:
        parts.append(f'MemAvailable {gb(available_memory())}')
    if shared_memory_free() is not None:
        parts.append(f'/dev/shm free {gb(shared_memory_free())}')
    return ', '.join(parts) or 'memory figures unavailable'

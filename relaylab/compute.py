"""Where work runs: the device names relaylab accepts everywhere ("cpu", "cuda", "cuda:N"), the CPU cores this process
may use, and Dask clients (a scheduler's address, or a LocalCluster). Imports nothing heavy until asked: torch and
CuPy check that a GPU is there when one is asked for, distributed loads when a client is made."""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager

from .errors import RelaylabError

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
DEVICES_EXPECTED = "'cpu', 'cuda' or 'cuda:N' (N: the GPU's index)"


def check_device(device: str, where: str = "device") -> str:
    """`device` if it is a device name relaylab accepts, else a RelaylabError naming `where`."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise RelaylabError.at(where, "device", DEVICES_EXPECTED, repr(device))
    return device


def device_kind(device: str) -> str:
    """"cpu" or "cuda" (the family, for per-kind settings); ValueError for anything else, as estimators raise."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device must be {DEVICES_EXPECTED}, not {device!r}")
    return device.split(":")[0]


def gpu_index(device: str) -> int | None:
    """The GPU index of "cuda:N" (0 for plain "cuda"), None for "cpu"."""
    kind, _, index = device.partition(":")
    return None if device_kind(device) == "cpu" else int(index or 0)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which container limits set), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@contextmanager
def dask_client(scheduler: str | None, where: str, *, local: bool = False, n_workers: int | None = None):
    """A Dask client for the scheduler at `scheduler` (an unreachable one is a RelaylabError naming `where`); without
    one, a client of a new `LocalCluster` of `n_workers` single-threaded processes when `local`, else None (the
    caller computes in this process). Closed (and the local cluster shut down) on exit."""
    if not scheduler and not local:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as error:
            raise RelaylabError.at(where, "scheduler", "the address of a running Dask scheduler, e.g. tcp://host:8786",
                                   f"{scheduler!r}: {type(error).__name__}: {error}") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(local_worker_setup, quiet=not logging.getLogger("relaylab").isEnabledFor(logging.INFO))  # quiet without -v
        yield client


def local_worker_setup(quiet: bool) -> None:
    """Run on the workers of relaylab's own LocalCluster, which share this process's terminal.

    Ctrl-C reaches the whole process group: the workers ignore it and this process, which owns the job, stops it
    and shuts them down (a worker would otherwise die printing a KeyboardInterrupt traceback). With `quiet`, a task
    that raises is not also logged by its worker ("Compute Failed", with the traceback), nor are the tasks still
    running when the cluster then shuts down ("... ended with CancelledError"): the exception reaches this process,
    which reports it in one line (the traceback with -v).
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if quiet:
        logging.getLogger("distributed.worker").addFilter(_not_a_task_failure)
        logging.getLogger("distributed.worker.state_machine").addFilter(_not_a_task_failure)


def _not_a_task_failure(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not (message.startswith("Compute Failed") or message.endswith("ended with CancelledError"))

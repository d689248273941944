"""The trial process that a cluster job (SLURM or Ray) starts and stops on the trial's behalf."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def start_trial(argv: list[str], env: dict[str, str], log: str,
                own_session: bool = False) -> subprocess.Popen:
    """Start the trial command with its output appended to log.

    On Linux the trial gets SIGTERM when the job process that started it dies (a killed Ray worker,
    a SLURM job step killed outright), so it saves its state instead of running on as an orphan.
    It ignores SIGUSR2, which SLURM sends to every process of a job as the time-limit warning:
    the job process answers it by stopping the trial with SIGTERM and asking for a requeue.
    own_session: the trial leaves the job's process group, which an engine may kill whole when the
    job process ends (Ray's raylet sends it SIGTERM, then SIGKILL 200 ms later: too soon to save).
    """
    with open(log, "a") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, preexec_fn=death_signal_setup(),
                                start_new_session=own_session)


def death_signal_setup():
    """A function for a forked child (Linux; None elsewhere): SIGTERM to it when its parent dies,
    and SIGUSR2 ignored."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, only called after it

    def setup():
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        libc.signal(int(signal.SIGUSR2), 1)  # SIG_IGN

    return setup


def stop_trial(proc: subprocess.Popen) -> None:
    """Ask the trial to save and stop (as Ctrl-C would); a repeated SIGTERM is harmless to it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

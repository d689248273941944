"""Every error a user can cause or meet: one paragraph each, with the exit code it ends with.

The CLI has one handler for MnistlabError (cli.main); a command never catches these itself.
"""

from __future__ import annotations

# the exit code of an exception that is not a MnistlabError: a bug in mnistlab (EX_SOFTWARE of
# sysexits.h); cli.py reports it in one paragraph and saves the traceback
BUG_EXIT_CODE = 70


class MnistlabError(Exception):
    """A failure told as one paragraph that names the problem and the fix."""

    exit_code = 2

    def message(self) -> str:
        return str(self)


class ConfigError(MnistlabError):
    """One or more problems with a config, each a sentence that names its key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def message(self) -> str:
        if len(self.problems) == 1:
            return f"config: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"the config has {len(self.problems)} problems:\n{lines}"


class DataError(MnistlabError):
    """A data problem: names the file and the fix."""


class CheckpointError(MnistlabError):
    """A checkpoint that cannot be used."""


class RunError(MnistlabError):
    """A run directory (or a runs directory) that cannot be used."""


class RunBusy(RunError):
    """A run directory that another live process (or scheduler job) is writing."""


class ImageError(MnistlabError):
    """An image file that cannot be classified."""


class DiskError(MnistlabError):
    """A file could not be written: the disk is full, read-only, or not ours."""

    exit_code = 1


class TrainError(MnistlabError):
    """A run that cannot go on; it is recorded as failed."""

    exit_code = 1


class Diverged(TrainError):
    """The loss became NaN, infinite, or grew a million-fold: at which epoch and step (1-based)."""

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class SweepError(MnistlabError):
    """A sweep that cannot start or go on."""


class TrialsMissed(SweepError):
    """The sweep ran, but some trials did not complete."""

    exit_code = 1


class Interrupted(MnistlabError):
    """Ctrl-C or SIGTERM stopped the work after its state was saved."""

    exit_code = 130


class ExecutorUnavailable(SweepError):
    """An executor whose package or scheduler is missing: says what to install."""


class ExportError(MnistlabError):
    """Runs that cannot be exported: a missing extra, or a target that is not for the tool."""


class ExecutorLost(SweepError):
    """The engine stopped answering while trials ran: says which, and how to continue them."""

    exit_code = 1


class ModelCodeError(MnistlabError):
    """Your own model class (model.kind: module) failed, or its code cannot be trusted."""


def closest(word, choices, cutoff: float = 0.6) -> str | None:
    """The choice a mistyped word most likely meant, or None."""
    import difflib

    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word, choices, otherwise: str = "", cutoff: float = 0.6) -> str:
    """'did you mean X?' for a mistyped word, else otherwise: the one hint every error gives."""
    match = closest(word, choices, cutoff)
    return f"did you mean {match}?" if match else otherwise


def first_line(text: str | None) -> str:
    """The first non-blank line of a tool's output, for a one-paragraph error."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""


def some(items: list[str], most: int = 6) -> str:
    """'a, b, c and 4 more': a list in an error, cut to its first few."""
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")

"""The exceptions that end a job with one line: the CLI prints the message and exits with the exception's code
(`exit_code_of`, for any exception)."""

import errno

# The exit codes of every command (docs/trust.md): 0 done, 1 unexpected (RunFailed), 2 bad input
# or a refused start (UserError), 3 diverged (Diverged), 75 stopped by a signal, resume to go on (Preempted).


class UserError(Exception):
    """Bad input (config value, missing data, unreadable checkpoint, a run directory in use...): exit code 2, and
    the run directory is left as it was."""

    exit_code = 2


class RunFailed(Exception):
    """A run that started and then stopped without a result; its failure.json says so."""

    exit_code = 1


class Diverged(RunFailed):
    """A non-finite training loss, test error or test NLL at an epoch's end: exit code 3, last good checkpoint kept."""

    exit_code = 3


class Preempted(BaseException):
    """Raised after a stop signal once every checkpoint is written (BaseException: it stops a whole sweep). Exit
    code 75 (EX_TEMPFAIL, "try again later"): rerun the same command to resume."""

    exit_code = 75


# OSErrors that mean the user's location cannot be written (permissions, a read-only or full disk, a missing
# parent): bad input, exit code 2, as `train` reports them.
UNWRITABLE = (
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOENT, errno.ENOTDIR, errno.EEXIST,
    errno.EISDIR,
)  # fmt: skip


def unwritable(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in UNWRITABLE


def exit_code_of(exc: BaseException) -> int:
    """The exit code an exception ends a command with: its own, or 2 for bad input (a config value OmegaConf refused,
    a location that cannot be written), else 1."""
    bad_input = type(exc).__module__.startswith("omegaconf") or unwritable(exc)
    return getattr(exc, "exit_code", UserError.exit_code if bad_input else RunFailed.exit_code)

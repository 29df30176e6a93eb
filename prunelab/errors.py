"""Errors that end a run in a way the user must be told about in one line."""


class ConfigError(ValueError):
    """A config value is wrong or points at something missing (shown as one line, exit code 2).

    The message starts with the offending field (``target_sparsity=1.5: ...``) or file
    (``train.tsv:12: ...``) and says what is allowed, so the command-line entrypoint can print it
    as one clear line.
    """


class RunInterrupted(BaseException):
    """The process received SIGTERM or SIGINT (cluster preemption, Ctrl-C) and stopped the run.

    A ``BaseException`` like ``KeyboardInterrupt``, so no ``except Exception`` swallows it. The
    command-line entrypoint exits with ``128 + signum``, the shell's convention for a signal.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class SweepRefused(BaseException):
    """A ``ConfigError`` found by a Hydra callback before a sweep's first job (one line, exit code 2).

    A ``BaseException``: Hydra turns an ``Exception`` raised in a callback into a warning and
    launches the jobs anyway.
    """

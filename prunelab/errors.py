"""Errors that users cause with their configuration (shown as one line, exit code 2)."""


class ConfigError(ValueError):
    """A config value is wrong or points at something missing.

    The message starts with the offending field (``target_sparsity=1.5: ...``) and says what
    is allowed, so the command-line entrypoint can print it as one clear line.
    """

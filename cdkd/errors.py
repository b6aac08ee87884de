"""Errors that the jobs turn into one clear line (no traceback) before any work starts."""


class CdkdError(Exception):
    """Base class: a user-facing problem with input, config or a run."""


class ConfigError(CdkdError, ValueError):
    """A bad config value, unknown name or inconsistent setting."""


class DataError(CdkdError):
    """A dataset that is missing, incomplete or in an unknown format."""


class TeacherError(CdkdError):
    """A teacher checkpoint that cannot be loaded or disagrees with the others."""


class NonFiniteLossError(CdkdError):
    """A loss became NaN/inf; the run stops and the last good checkpoint stays intact."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message` (the type alone when the message is empty)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__

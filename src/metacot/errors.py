"""Errors in what the user asked for, as opposed to bugs.

A `UsageError` carries a message that says what was wrong and what to do (a config value, a path, a
missing prerequisite such as the SFT model an RL run starts from). `train.py` prints it as one
paragraph, records the job as failed, and exits with status 1 — no traceback, which would only say
where metacot noticed the mistake. Each subclass is also the built-in exception it stands for
(`BadValue` is a ValueError, `MissingInput` a FileNotFoundError), so callers that catch those keep
working.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UsageError(Exception):
    """A mistake in the user's request; the message says what to do."""


class BadValue(UsageError, ValueError):
    """A config value, or a file's content, that cannot be used."""


class MissingInput(UsageError, FileNotFoundError):
    """A file or directory the run needs is not there."""


@contextmanager
def user_input(what: str | None = None) -> Iterator[None]:
    """Inside, a ValueError or FileNotFoundError is a problem with the user's input (a path, a
    config value): it leaves as a UsageError, prefixed with `what` when given."""
    try:
        yield
    except UsageError:
        raise
    except (FileNotFoundError, NotADirectoryError) as e:
        raise MissingInput(_message(what, e)) from e
    except ValueError as e:
        raise BadValue(_message(what, e)) from e


def _message(what: str | None, e: BaseException) -> str:
    text = str(e) if not isinstance(e, OSError) or not e.filename else (
        f"{e.strerror or e}: {e.filename}" if e.strerror else str(e))
    return f"{what}: {text}" if what else text

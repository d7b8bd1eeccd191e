"""Errors of wsctl, each carrying the exit code it ends the command with.

::

    CtlError            exit 1: something went wrong (message, optional hint)
    ├── UsageProblem    exit 2: a bad option, option combination or input file
    ├── Unreachable     exit 1: the target did not answer (refused, timed out)
    ├── ApiError        exit 1: the target answered with an error (.status, .code)
    │   └── Unauthorized    401: the API key was refused
    └── NotDone         exit 3: what was asked did not happen (offline, not acked)
        └── NotFound        404: the pod, message or dead letter does not exist

Messages are one line, never contain an API key or a token, and are printed as
``wsctl: error: <message>`` (plus ``hint: <hint>`` when there is one).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_DONE = 3


class CtlError(Exception):
    """Root of wsctl's errors; ``exit_code`` is what the process exits with."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageProblem(CtlError):
    """The command line cannot be carried out as given."""

    exit_code = EXIT_USAGE


class Unreachable(CtlError):
    """The target could not be reached or did not answer in time."""


class ApiError(CtlError):
    """The target answered with an error document."""

    def __init__(self, message: str, *, status: int, code: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
        self.code = code


class Unauthorized(ApiError):
    """The admin API refused the API key (HTTP 401)."""


class NotDone(CtlError):
    """The request was valid but what it asked for did not happen."""

    exit_code = EXIT_NOT_DONE


class NotFound(NotDone):
    """The pod, message or dead letter asked for does not exist (HTTP 404)."""

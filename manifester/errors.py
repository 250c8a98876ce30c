"""The one exception tree of manifester.

Every error a user can meet derives from :class:`ManifesterError`. Each carries a
message that names the thing that failed (object, shard, field, dataset) and a
``hint`` that says what to do next; the CLI prints both on one or two lines and
exits non-zero, never with a traceback. Third-party errors (botocore, google-api-core,
httpx, sqlite3) are converted at one boundary per module with ``raise ... from exc``.

    ManifesterError                 (exit code 1 unless said otherwise)
    ├── ConfigError                 bad flags, options, config file, environment (exit 2)
    │   └── MissingExtraError       a cloud SDK or server dependency is not installed
    ├── SourceError                 scanning or reading a bucket / folder failed
    │   ├── SourceNotFoundError     bucket, prefix or folder does not exist
    │   └── CredentialsError        no or wrong cloud credentials
    ├── ValidationError             entries (or labels) fail their JSON Schema
    ├── ShardError                  an entry cannot fit the shard limits
    ├── PublishError                manifest store missing / not writable, presigning failed
    ├── TheosError                  the Theos API answered with an error
    │   ├── AuthError               401 / 403: wrong or missing token
    │   ├── NotFoundError           404: unknown project key, dataset, example, task
    │   ├── BadRequestError         400: a field was refused
    │   ├── BusyError               409: an upload is already running on the dataset
    │   └── TransientError          429, 5xx, timeouts, dropped connections (retryable)
    ├── TaskFailedError             a Theos task ended FAILURE or REVOKED
    ├── LedgerError                 the state file is unreadable or from a newer version
    │   └── LockedError             another run holds the ledger's lock
    └── Interrupted                 the user pressed Ctrl-C; state was saved (exit 130)

``transient`` tells whether simply retrying later can help.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadRequestError",
    "BusyError",
    "ConfigError",
    "CredentialsError",
    "Interrupted",
    "LedgerError",
    "LockedError",
    "ManifesterError",
    "MissingExtraError",
    "NotFoundError",
    "PublishError",
    "ShardError",
    "SourceError",
    "SourceNotFoundError",
    "TaskFailedError",
    "TheosError",
    "TransientError",
    "ValidationError",
]


class ManifesterError(Exception):
    """Root of every error manifester raises on purpose."""

    exit_code: int = 1
    transient: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(ManifesterError):
    """A flag, option, config file or environment variable is wrong."""

    exit_code = 2


class MissingExtraError(ConfigError):
    """An optional dependency is needed; the message names the extra to install."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(
            f"{what} needs the '{extra}' extra, which is not installed",
            hint=f"pip install 'manifester[{extra}]'",
        )
        self.extra = extra


class SourceError(ManifesterError):
    """Listing or reading the source failed."""


class SourceNotFoundError(SourceError):
    """The bucket, prefix or folder does not exist."""


class CredentialsError(SourceError):
    """Cloud credentials are missing, expired or refused."""


class ValidationError(ManifesterError):
    """One or more entries fail the JSON Schema; ``problems`` lists them (capped)."""

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or []

    def __str__(self) -> str:
        lines = [self.message, *(f"  - {p}" for p in self.problems)]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class ShardError(ManifesterError):
    """An entry alone is larger than the shard byte limit, or limits are inconsistent."""


class PublishError(ManifesterError):
    """Writing or presigning a manifest or an image URL failed."""


class TheosError(ManifesterError):
    """The Theos API refused a request. ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class AuthError(TheosError):
    """401/403: the API token is missing or wrong."""


class NotFoundError(TheosError):
    """404: the project key, dataset, example or task is unknown."""


class BadRequestError(TheosError):
    """400: a field was refused; the message names it."""


class BusyError(TheosError):
    """409: an upload is already running on this dataset."""

    transient = True


class TransientError(TheosError):
    """429, 5xx, timeouts and dropped connections, after retries ran out."""

    transient = True


class TaskFailedError(ManifesterError):
    """A Theos task ended in FAILURE or REVOKED."""

    def __init__(self, message: str, *, task_id: str, state: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.task_id = task_id
        self.state = state


class LedgerError(ManifesterError):
    """The ledger (state file) cannot be used."""


class LockedError(LedgerError):
    """Another run holds the ledger's lock."""

    transient = True


class Interrupted(ManifesterError):
    """The run was interrupted (Ctrl-C / SIGTERM) after its state was recorded."""

    exit_code = 130

"""The one exception tree of migrated.

Every error a user can cause is a ``MigError`` whose message is one sentence saying what happened and what to
do. Each class names its gRPC status code (by name, so that importing this module, which every app does, does
not import grpc) and the exit code of the ``mig`` command line::

    MigError                      UNKNOWN              1
    ├── UsageError                INVALID_ARGUMENT     2
    │   ├── AppFileError          INVALID_ARGUMENT     2   the app's file is missing or unreadable
    │   ├── NotAnAppError         INVALID_ARGUMENT     2   the file defines no App subclass
    │   ├── AmbiguousAppError     INVALID_ARGUMENT     2   several App subclasses and no :Class
    │   ├── AppCodeError          INVALID_ARGUMENT     2   the app's code fails to load (syntax error, ...)
    │   ├── RetentionPolicyError  INVALID_ARGUMENT     2   a --keep policy cannot be parsed
    │   └── ConfigError           INVALID_ARGUMENT     2   the daemon's flags or config file are wrong
    ├── AppNotFoundError          NOT_FOUND            3
    ├── AppExistsError            ALREADY_EXISTS       4
    ├── AppStateError             FAILED_PRECONDITION  5   the app is not in a state that allows this
    │   ├── StaleCopyError        FAILED_PRECONDITION  5   a newer copy of the app runs: this one must stop
    │   └── AppBusyError          DEADLINE_EXCEEDED    5   a handler runs on: no safe point came in time
    ├── DaemonError               UNAVAILABLE          6
    │   └── DaemonNotRunningError UNAVAILABLE          6   no daemon answers on the socket
    ├── StateDirError             FAILED_PRECONDITION  7   the state directory cannot be used
    │   └── DirectoryLockedError  FAILED_PRECONDITION  7   another daemon owns the directory
    ├── RunnerError               INTERNAL             8   the runner process failed to start
    ├── CheckpointError           INTERNAL             9   a checkpoint could not be taken, stored or loaded
    │   ├── UnserialisableStateError FAILED_PRECONDITION 9 the app's state holds something that cannot be saved
    │   ├── CheckpointDamagedError DATA_LOSS           9   a stored chunk of that version fails its hash check
    │   ├── ExportFileError       INVALID_ARGUMENT     9   the file to import is not an export, or is damaged
    │   └── StorageError          RESOURCE_EXHAUSTED   9   the disk is full or read-only: nothing was saved
    ├── VersionNotFoundError      NOT_FOUND            3   the app has no checkpoint with that number
    └── PeerError                 UNAVAILABLE         10   another host's daemon could not be used
        ├── PeerNotFoundError     NOT_FOUND           10   no peer of that name or address is known
        ├── PeerUnreachableError  UNAVAILABLE         10   the peer does not answer
        ├── NotPairedError        PERMISSION_DENIED   11   the peer is not paired (either side)
        ├── PeerIdentityError     PERMISSION_DENIED   11   the peer's certificate is not the paired one
        └── PairingError          PERMISSION_DENIED   11   a pairing code is wrong, expired or used up
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from typing import ClassVar

__all__ = [
    "AmbiguousAppError",
    "AppCodeError",
    "AppExistsError",
    "AppFileError",
    "AppNotFoundError",
    "AppStateError",
    "DaemonError",
    "DaemonNotRunningError",
    "DirectoryLockedError",
    "MigError",
    "NotAnAppError",
    "RunnerError",
    "StaleCopyError",
    "StateDirError",
    "UsageError",
]


class MigError(Exception):
    """Base of every error migrated reports to a user."""

    grpc_status: ClassVar[str] = "UNKNOWN"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(MigError):
    """The command was given something it cannot use."""

    grpc_status = "INVALID_ARGUMENT"
    exit_code = 2


class AppFileError(UsageError):
    """The app's file is missing or cannot be read."""


class NotAnAppError(UsageError):
    """The file defines no ``migrated.App`` subclass."""


class AmbiguousAppError(UsageError):
    """The file defines several App subclasses and none was chosen."""


class AppCodeError(UsageError):
    """The app's code fails to load (a syntax error, a failing import)."""


class AppNotFoundError(MigError):
    """No app has that name."""

    grpc_status = "NOT_FOUND"
    exit_code = 3


class AppExistsError(MigError):
    """An app with that name exists already."""

    grpc_status = "ALREADY_EXISTS"
    exit_code = 4


class AppStateError(MigError):
    """The app is not in a state that allows the request."""

    grpc_status = "FAILED_PRECONDITION"
    exit_code = 5


class StaleCopyError(AppStateError):
    """The home knows a newer epoch of the app: the copy that asked must stop."""


class AppBusyError(AppStateError):
    """The app is inside a handler that runs on: no safe point came within the bound; the message names it."""

    grpc_status = "DEADLINE_EXCEEDED"


class DaemonError(MigError):
    """The daemon cannot be reached or failed to answer."""

    grpc_status = "UNAVAILABLE"
    exit_code = 6


class DaemonNotRunningError(DaemonError):
    """No daemon answers on the state directory's socket."""


class StateDirError(MigError):
    """The state directory cannot be used."""

    grpc_status = "FAILED_PRECONDITION"
    exit_code = 7


class DirectoryLockedError(StateDirError):
    """Another daemon owns the state directory."""


class RunnerError(MigError):
    """The runner process for an app failed to start or to answer."""

    grpc_status = "INTERNAL"
    exit_code = 8


class CheckpointError(MigError):
    """A checkpoint could not be taken, stored or loaded."""

    grpc_status = "INTERNAL"
    exit_code = 9


class UnserialisableStateError(CheckpointError):
    """The app's state holds something that cannot be saved; the message names the attribute and the fix."""

    grpc_status = "FAILED_PRECONDITION"


class CheckpointDamagedError(CheckpointError):
    """A stored chunk of a version fails its hash check; an earlier version may still be good."""

    grpc_status = "DATA_LOSS"

    def __init__(self, message: str, *, app: str = "", version: int = 0) -> None:
        super().__init__(message)
        self.app = app
        self.version = version


class ExportFileError(CheckpointError):
    """The file given to import is not a migrated export, or it is damaged or truncated."""

    grpc_status = "INVALID_ARGUMENT"


class StorageError(CheckpointError):
    """The state directory's disk is full or cannot be written: what was asked was not saved."""

    grpc_status = "RESOURCE_EXHAUSTED"


class VersionNotFoundError(MigError):
    """The app has no checkpoint with that version number."""

    grpc_status = "NOT_FOUND"
    exit_code = 3


class RetentionPolicyError(UsageError):
    """A retention policy (``--keep last=20,hourly=24,daily=7``) cannot be parsed."""


__all__ += [
    "AppBusyError",
    "CheckpointDamagedError",
    "CheckpointError",
    "ExportFileError",
    "RetentionPolicyError",
    "StorageError",
    "UnserialisableStateError",
    "VersionNotFoundError",
]


class ConfigError(UsageError):
    """The daemon's flags or its config file cannot be used."""


class PeerError(MigError):
    """Another host's daemon could not be used."""

    grpc_status = "UNAVAILABLE"
    exit_code = 10


class PeerNotFoundError(PeerError):
    """No peer of that name or address is known."""

    grpc_status = "NOT_FOUND"


class PeerUnreachableError(PeerError):
    """The peer does not answer."""


class NotPairedError(PeerError):
    """This host and the peer are not paired, on one side or both."""

    grpc_status = "PERMISSION_DENIED"
    exit_code = 11


class PeerIdentityError(PeerError):
    """The host answering presents a certificate other than the paired one."""

    grpc_status = "PERMISSION_DENIED"
    exit_code = 11


class PairingError(PeerError):
    """A pairing code is wrong, expired or used up."""

    grpc_status = "PERMISSION_DENIED"
    exit_code = 11


__all__ += [
    "ConfigError",
    "NotPairedError",
    "PairingError",
    "PeerError",
    "PeerIdentityError",
    "PeerNotFoundError",
    "PeerUnreachableError",
]
__all__ += ["error_class"]


def _subclasses(cls: type[MigError]) -> list[type[MigError]]:
    return [cls, *(found for sub in cls.__subclasses__() for found in _subclasses(sub))]


_BY_NAME: dict[str, type[MigError]] = {cls.__name__: cls for cls in _subclasses(MigError)}


def error_class(name: str) -> type[MigError]:
    """Return the error class called ``name``, or ``MigError`` for a name this version does not know."""
    return _BY_NAME.get(name, MigError)

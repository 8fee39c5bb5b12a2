"""The one error family of P2C2R.

Every failure a caller can see is a ``P2C2RError``. The leaves are named for what the
caller can do about it (wait and retry, fix the input, pick another peer, distrust the
peer), in the spirit of httpx's error families. Foreign exceptions are translated at the
adapter boundary with ``raise ... from``.
"""

from __future__ import annotations


class P2C2RError(Exception):
    """Root of every error P2C2R raises on purpose."""

    code: str = "error"


class ConfigError(P2C2RError):
    """A setting, flag, file or address is wrong; the message says how to fix it."""

    code = "config"


class ValidationError(P2C2RError):
    """Task parameters or input data are invalid; nothing was computed."""

    code = "invalid"


class UnknownKindError(ValidationError):
    """The task kind is not in the registry of built-in kernels."""

    code = "unknown_kind"


class LimitExceededError(ValidationError):
    """A size, count or sample limit of the task kind is exceeded."""

    code = "limit"


class ProtocolError(P2C2RError):
    """A peer sent something that breaks the wire protocol (malformed, oversized, bad version)."""

    code = "protocol"


class FrameTooLargeError(ProtocolError):
    """A frame's declared length exceeds the configured maximum frame size."""

    code = "frame_too_large"


class UnsupportedVersionError(ProtocolError):
    """A frame carries a protocol version this node does not speak."""

    code = "version"


class TaskTimeoutError(P2C2RError):
    """The task's deadline passed before a verified result arrived."""

    code = "timeout"


class UnavailableError(P2C2RError):
    """No reachable peer can take the work (all connections down, none capable)."""

    code = "unavailable"


class RejectedError(P2C2RError):
    """A peer refused the task (over capacity, expired, or refused by policy)."""

    code = "rejected"


class TaskFailedError(P2C2RError):
    """The worker ran the kernel and it failed; the message carries the worker's reason."""

    code = "failed"


class VerificationError(P2C2RError):
    """A result's signature, binding to its task, or content check failed: do not trust it."""

    code = "verification"


class CancelledTaskError(P2C2RError):
    """The caller cancelled the task before it completed."""

    code = "cancelled"


#: Error codes that may travel on the wire in an error reply, mapped to the class the
#: receiving side raises. Unknown codes fall back to ``TaskFailedError``.
WIRE_ERRORS: dict[str, type[P2C2RError]] = {
    cls.code: cls
    for cls in (
        ValidationError,
        UnknownKindError,
        LimitExceededError,
        ProtocolError,
        FrameTooLargeError,
        UnsupportedVersionError,
        TaskTimeoutError,
        RejectedError,
        TaskFailedError,
        UnavailableError,
    )
}


def error_from_wire(code: str, message: str) -> P2C2RError:
    """Rebuild a typed error from an error reply's code and message."""
    return WIRE_ERRORS.get(code, TaskFailedError)(message)


class ConnectionLostError(UnavailableError):
    """The connection or stream to a peer broke (reset, closed, dial failed)."""

    code = "connection_lost"

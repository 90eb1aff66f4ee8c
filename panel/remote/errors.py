"""Errors of remote access, each with a message a person can act on."""

from __future__ import annotations


class RemoteError(Exception):
    """Base class: ``str(error)`` is shown to users as it is, so it never carries secrets."""


class Unreachable(RemoteError):
    """The server did not answer (refused, timed out, no SSH banner)."""


class HostKeyNotConfirmed(RemoteError):
    """No person has confirmed the server's host key yet."""


class HostKeyMismatch(RemoteError):
    """The server presented a key other than the pinned one; nothing was sent."""

    def __init__(self, *, label: str, presented: str, pinned: str) -> None:
        self.presented = presented
        self.pinned = pinned
        super().__init__(
            f"Host key mismatch for {label}: the server presented {presented} but {pinned} is pinned. "
            "The connection was closed before any command was sent. If the server was reinstalled, "
            "verify the new fingerprint out of band and confirm it again on the server page."
        )


class AuthenticationFailed(RemoteError):
    """The server refused the panel's key."""


class CommandTimeout(RemoteError):
    """A command ran longer than allowed, or stopped producing output."""

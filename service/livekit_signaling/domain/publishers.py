"""Who may command: the RabbitMQ users whose commands the service acts on.

RabbitMQ checks the AMQP ``user_id`` property of every published message against the user of the
publishing connection and closes the channel (``PRECONDITION_FAILED``) on a mismatch, unless that user
has the ``impersonator`` tag. So a command's ``user_id`` is either absent or the name of the user who
really published it, and an envelope's ``"role": "moderator"`` is only believed from a trusted one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TrustedPublishers:
    """``names=None``: every publisher is trusted (no ``SIGNALING_TRUSTED_PUBLISHERS``, as before)."""

    names: frozenset[str] | None = None

    def allows(self, user_id: str | None) -> bool:
        return self.names is None or (user_id is not None and user_id in self.names)

    def refusal(self, user_id: str | None) -> str:
        """Why a command is not acted on, for the dead letter's reason and the log (never its body)."""
        if user_id is None:
            return "untrusted_publisher: the command has no user_id"
        return f"untrusted_publisher: user_id {user_id!r} is not a trusted publisher"

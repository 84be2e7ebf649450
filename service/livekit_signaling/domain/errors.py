"""Failures the domain knows how to answer."""


class LiveKitUnavailable(Exception):
    """LiveKit did not answer in time, or kept failing, within the command's deadline."""


class LiveKitRejected(Exception):
    """LiveKit refused a call (a 4xx other than "not found")."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"LiveKit refused the call: {code} (HTTP {status})")
        self.code = code
        self.status = status


class StaleState(Exception):
    """Another writer saved the room's state since it was loaded; the command must be retried."""


class StoreUnavailable(Exception):
    """The state store cannot be reached; the command is returned to the queue."""

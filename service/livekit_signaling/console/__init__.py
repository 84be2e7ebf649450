"""The dev console: one page that shows the service's rooms next to the emulated LiveKit, sends commands
as anyone, lists the events as they pass, and simulates LiveKit clients (``livekit-signaling dev``)."""

from .server import Console

__all__ = ["Console"]

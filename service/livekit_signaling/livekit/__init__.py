"""The LiveKit adapter: the only code that calls ``livekit-api``."""

from livekit_signaling.livekit.adapter import LiveKitAdapter
from livekit_signaling.livekit.tokens import TokenMinter

__all__ = ["LiveKitAdapter", "TokenMinter"]

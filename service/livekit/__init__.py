"""The LiveKit adapter: the only code that calls ``livekit-api``."""

from service.livekit.adapter import LiveKitAdapter
from service.livekit.tokens import TokenMinter

__all__ = ["LiveKitAdapter", "TokenMinter"]

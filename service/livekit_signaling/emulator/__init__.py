"""A LiveKit server emulator speaking the real RoomService Twirp API (dev mode, tests, benchmarks)."""

from .server import EmulatorFault, LiveKitEmulator
from .state import EmulatorError

__all__ = ["EmulatorError", "EmulatorFault", "LiveKitEmulator"]

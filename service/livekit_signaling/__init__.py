"""livekit-signaling: RabbitMQ commands in, LiveKit actions and per-participant events out."""

__version__ = "0.1.0"

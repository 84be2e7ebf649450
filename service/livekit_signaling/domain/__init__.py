"""What a command means: pure decisions about rooms and permissions, and the handler that carries them out
through the ports in ``livekit_signaling.domain.ports`` (LiveKit, state store). No AMQP here."""

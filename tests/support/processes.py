"""``testkit.processes`` under its old name, for tests/console until its imports follow."""

from testkit.processes import AMQP_URL, LOG_DIR, DevProcess, Names

__all__ = ["AMQP_URL", "LOG_DIR", "DevProcess", "Names"]

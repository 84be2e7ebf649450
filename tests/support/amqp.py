"""``testkit.amqp`` under its old name, for tests/console until its imports follow."""

from testkit.amqp import delete_topology

__all__ = ["delete_topology"]

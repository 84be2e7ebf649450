"""Where a test process runs: on this machine's loopback (``LOCALHOST``), or in a network namespace of
its own at an address of a test network (``testkit.netns``). The starters (RabbitMQ nodes, Redis
servers and Sentinels, the service) take a ``Host`` and do the same thing on either: listen on its
address, and start their commands through ``Host.command``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    """``name`` for humans and logs; ``address`` where the others reach it; ``namespace`` the network
    namespace its processes run in (None: this machine's own)."""

    name: str
    address: str = "127.0.0.1"
    namespace: str | None = None

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` as run on this host. ``ip netns exec`` enters the namespace and then execs the
        command, so the process started is the command itself (its pid is the command's)."""
        if self.namespace is None:
            return list(args)
        return ["ip", "netns", "exec", self.namespace, *args]

    @property
    def erlang_address(self) -> str:
        """The address as an Erlang tuple (``{127,0,0,1}``), for ``inet_dist_use_interface``."""
        return "{" + self.address.replace(".", ",") + "}"


#: Every process on this machine's loopback, as the tests run without a test network.
LOCALHOST = Host("localhost")

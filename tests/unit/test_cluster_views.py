"""Which RabbitMQ node the partition tests restart when the cluster stays split after a heal
(``testkit.rabbit_cluster.outside_the_common_view``): the node a restart should bring back, never one of
the group the others agree on."""

from __future__ import annotations

import pytest

from testkit.rabbit_cluster import outside_the_common_view

ALL = {"a", "b", "c"}


@pytest.mark.parametrize(
    ("views", "restart"),
    [
        # Whole: nothing to restart.
        ({"a": ALL, "b": ALL, "c": ALL}, []),
        # What a nemesis can leave: a runs alone, b and c see each other.
        ({"a": {"a"}, "b": {"b", "c"}, "c": {"b", "c"}}, ["a"]),
        # a believes it is whole, its peers do not see it: a still goes.
        ({"a": ALL, "b": {"b", "c"}, "c": {"b", "c"}}, ["a"]),
        # Every node alone: keep one (the same one every time), restart the others.
        ({"a": {"a"}, "b": {"b"}, "c": {"c"}}, ["a", "b"]),
        # A node that did not answer its CLI does not outvote the two that agree.
        ({"a": set(), "b": ALL, "c": ALL}, []),
    ],
)
def test_the_node_outside_the_view_most_nodes_share_is_restarted(
    views: dict[str, set[str]], restart: list[str]
) -> None:
    assert outside_the_common_view(views) == restart

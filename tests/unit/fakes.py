"""Small fakes of the domain's ports, for the unit tests of the handler and the processor (and the
Redis replication tests, which run the handler on a real store): LiveKit, which records its calls or
is unavailable, and a token minter whose tokens are readable JSON; ``fake_handler`` wires them."""

from __future__ import annotations

import json
from collections.abc import Sequence

from livekit_signaling.domain.errors import LiveKitUnavailable
from livekit_signaling.domain.handler import CommandHandler, ConnectionUrls
from livekit_signaling.domain.permissions import PublishPolicy, TokenGrant
from livekit_signaling.domain.ports import ConnectedParticipant, StateStore


class FakeLiveKit:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.connected: dict[str, ConnectedParticipant] = {}
        self.unavailable = False

    def _call(self, *call: str) -> None:
        if self.unavailable:
            raise LiveKitUnavailable(call[0])
        self.calls.append(call)

    async def ensure_room(self, room: str) -> None:
        self._call("ensure_room", room)

    async def list_participants(self, room: str) -> list[ConnectedParticipant]:
        self._call("list_participants", room)
        return list(self.connected.values())

    async def set_publish_sources(
        self, room: str, changes: Sequence[tuple[ConnectedParticipant, frozenset[str]]]
    ) -> None:
        for participant, sources in changes:
            self._call("set_publish_sources", participant.identity, ",".join(sorted(sources)))

    async def mute_track(self, room: str, identity: str, track_sid: str) -> None:
        self._call("mute_track", identity, track_sid)

    async def remove_participant(self, room: str, identity: str) -> None:
        self._call("remove_participant", identity)

    async def delete_room(self, room: str) -> None:
        self._call("delete_room", room)


class FakeTokens:
    def issue(self, grant: TokenGrant) -> str:
        return json.dumps(
            {
                "identity": grant.identity,
                "room": grant.room,
                "sources": sorted(grant.publish_sources),
                "hidden": grant.hidden,
                "data": grant.can_publish_data,
            }
        )


def fake_handler(
    store: StateStore,
    *,
    livekit: FakeLiveKit | None = None,
    policy: PublishPolicy | None = None,
    urls: ConnectionUrls | None = None,
) -> CommandHandler:
    """The handler on ``store``, with fake LiveKit (a fresh one unless given) and fake tokens."""
    return CommandHandler(
        livekit=livekit or FakeLiveKit(),
        tokens=FakeTokens(),
        store=store,
        policy=policy or PublishPolicy(),
        urls=urls or ConnectionUrls(public_url="wss://public"),
    )

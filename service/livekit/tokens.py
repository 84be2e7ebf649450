"""Access tokens, minted with ``livekit-api`` from the domain's ``TokenGrant``."""

from __future__ import annotations

import datetime

from livekit.api import AccessToken, VideoGrants

from service.domain.permissions import TokenGrant


class TokenMinter:
    """Tokens bound to one identity and one room; never admin, create, list or record grants."""

    def __init__(self, api_key: str, api_secret: str, *, ttl_seconds: int) -> None:
        self._api_key = api_key
        self._api_secret = api_secret
        self._ttl = datetime.timedelta(seconds=ttl_seconds)

    def issue(self, grant: TokenGrant) -> str:
        sources = sorted(grant.publish_sources)
        video = VideoGrants(
            room_join=True,
            room=grant.room,
            can_subscribe=True,
            # LiveKit reads an empty source list as "every source": nothing to publish must be
            # can_publish=false.
            can_publish=bool(sources),
            can_publish_sources=sources,
            can_publish_data=grant.can_publish_data,
            hidden=grant.hidden,
        )
        return (
            AccessToken(self._api_key, self._api_secret)
            .with_identity(grant.identity)
            .with_grants(video)
            .with_ttl(self._ttl)
            .to_jwt()
        )

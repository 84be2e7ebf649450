"""Access tokens: the claims livekit-api's ``AccessToken`` writes, signed with the same PyJWT call.

``AccessToken.to_jwt`` spends most of its time turning dataclasses into the claims dict
(``dataclasses.asdict`` with deep copies and a camelCase pass): about a tenth of the service's CPU per
command in the benchmark's profile. Here the claims dict is written directly; a unit test decodes tokens
from both and requires identical claims, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from service.domain.permissions import TokenGrant


def video_claims(grant: TokenGrant) -> dict[str, Any]:
    """The ``video`` claim exactly as ``VideoGrants`` serializes it (None and "" left out)."""
    sources = sorted(grant.publish_sources)
    claims: dict[str, Any] = {
        "roomJoin": True,
        "room": grant.room,
        # LiveKit reads an empty source list as "every source": nothing to publish must be
        # canPublish=false.
        "canPublish": bool(sources),
        "canSubscribe": True,
        "canPublishData": grant.can_publish_data,
        "canPublishSources": sources,
        "hidden": grant.hidden,
    }
    return claims


class TokenMinter:
    """Tokens bound to one identity and one room; never admin, create, list or record grants."""

    def __init__(self, api_key: str, api_secret: str, *, ttl_seconds: int) -> None:
        self._api_key = api_key
        self._api_secret = api_secret
        self._ttl = ttl_seconds

    def issue(self, grant: TokenGrant) -> str:
        now = int(time.time())
        claims = {
            "video": video_claims(grant),
            "sub": grant.identity,
            "iss": self._api_key,
            "nbf": now,
            "exp": now + self._ttl,
        }
        return jwt.encode(claims, self._api_secret, algorithm="HS256")

"""Access tokens: the claims livekit-api's ``AccessToken`` writes, as the HS256 JWT LiveKit verifies.

Minting a token is on the path of nearly every command, so it is written for speed, and tested for
equality instead of reused:

- ``AccessToken.to_jwt`` spends most of its time turning dataclasses into the claims dict
  (``dataclasses.asdict`` with deep copies and a camelCase pass); here the claims dict is written directly.
- ``jwt.encode`` (PyJWT) re-validates the key, JSON-encodes the header and sorts keys on every call:
  61 µs per token against 7 µs for the same bytes from a constant header, msgspec's encoder and an HMAC
  keyed once (``hmac.copy`` reuses the key schedule).

Unit tests decode our tokens with PyJWT and with livekit-api's ``TokenVerifier`` and require claims
identical to ``AccessToken``'s for the same grant, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import msgspec

from livekit_signaling.domain.permissions import TokenGrant


def _b64url(data: bytes) -> bytes:
    """RFC 7515 base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


#: RFC 7515 header of every token; PyJWT writes the same two members.
_HEADER = _b64url(b'{"alg":"HS256","typ":"JWT"}')


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
        self._mac = hmac.new(api_secret.encode(), digestmod=hashlib.sha256)
        self._ttl = ttl_seconds
        self._encoder = msgspec.json.Encoder()

    def issue(self, grant: TokenGrant) -> str:
        now = int(time.time())
        claims = {
            "video": video_claims(grant),
            "sub": grant.identity,
            "iss": self._api_key,
            "nbf": now,
            "exp": now + self._ttl,
        }
        signing_input = _HEADER + b"." + _b64url(self._encoder.encode(claims))
        mac = self._mac.copy()
        mac.update(signing_input)
        return (signing_input + b"." + _b64url(mac.digest())).decode("ascii")

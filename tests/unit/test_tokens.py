"""Our minter writes exactly the claims livekit-api's AccessToken writes for the same grant."""

from __future__ import annotations

import datetime

import jwt
import pytest
from livekit.api import AccessToken, TokenVerifier, VideoGrants

from livekit_signaling.domain.permissions import ALL_SOURCES, TokenGrant
from livekit_signaling.livekit.tokens import TokenMinter

KEY, SECRET = "key", "secret-" + "s" * 32

GRANTS = [
    TokenGrant(room="r:1", identity="p", publish_sources=ALL_SOURCES, can_publish_data=True, hidden=False),
    TokenGrant(
        room="r", identity="p", publish_sources=frozenset({"camera"}), can_publish_data=True, hidden=False
    ),
    TokenGrant(
        room="r", identity="p.popout1", publish_sources=frozenset(), can_publish_data=False, hidden=True
    ),
    TokenGrant(room="r", identity="rec", publish_sources=frozenset(), can_publish_data=False, hidden=True),
    # Non-ASCII and JSON-special characters: msgspec writes UTF-8 where PyJWT writes \u escapes.
    TokenGrant(
        room='Räum "1" \\ ☃', identity="p-ü", publish_sources=ALL_SOURCES, can_publish_data=True, hidden=False
    ),
]


def reference_token(grant: TokenGrant, ttl: int) -> str:
    sources = sorted(grant.publish_sources)
    video = VideoGrants(
        room_join=True,
        room=grant.room,
        can_subscribe=True,
        can_publish=bool(sources),
        can_publish_sources=sources,
        can_publish_data=grant.can_publish_data,
        hidden=grant.hidden,
    )
    return (
        AccessToken(KEY, SECRET)
        .with_identity(grant.identity)
        .with_grants(video)
        .with_ttl(datetime.timedelta(seconds=ttl))
        .to_jwt()
    )


@pytest.mark.parametrize("grant", GRANTS, ids=lambda g: g.identity)
def test_claims_match_livekit_api(grant: TokenGrant) -> None:
    ours = jwt.decode(TokenMinter(KEY, SECRET, ttl_seconds=60).issue(grant), SECRET, algorithms=["HS256"])
    theirs = jwt.decode(reference_token(grant, 60), SECRET, algorithms=["HS256"])
    assert ours.pop("exp") - ours.pop("nbf") == 60
    # livekit-api reads the clock separately for nbf and exp: across a second boundary they are 61 apart.
    assert theirs.pop("exp") - theirs.pop("nbf") in (60, 61)
    assert ours == theirs


def test_livekit_verifier_reads_our_grants() -> None:
    token = TokenMinter(KEY, SECRET, ttl_seconds=60).issue(GRANTS[1])
    claims = TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == "p"
    assert claims.video is not None
    assert (claims.video.room, claims.video.room_join, claims.video.can_publish_sources) == (
        "r",
        True,
        ["camera"],
    )
    assert not claims.video.room_admin


def test_header_is_what_pyjwt_writes() -> None:
    ours = TokenMinter(KEY, SECRET, ttl_seconds=60).issue(GRANTS[0])
    assert jwt.get_unverified_header(ours) == jwt.get_unverified_header(reference_token(GRANTS[0], 60))


def test_signature_is_bound_to_the_secret_and_the_claims() -> None:
    token = TokenMinter(KEY, SECRET, ttl_seconds=60).issue(GRANTS[0])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + "x", algorithms=["HS256"])
    header, _claims, signature = token.split(".")
    other = TokenMinter(KEY, SECRET, ttl_seconds=60).issue(GRANTS[1]).split(".")[1]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{header}.{other}.{signature}", SECRET, algorithms=["HS256"])


def test_minter_is_reusable() -> None:
    """The keyed HMAC is copied per token: a second token must not carry the first one's state."""
    minter = TokenMinter(KEY, SECRET, ttl_seconds=60)
    for grant in GRANTS:
        jwt.decode(minter.issue(grant), SECRET, algorithms=["HS256"])

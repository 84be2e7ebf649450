"""The pieces of least privilege that need no broker: who is trusted, which user ``send`` claims to be,
tokens redacted from the copies of events that are kept, and the setting that names the publishers."""

from __future__ import annotations

import json

import pytest

from livekit_signaling.app.settings import SettingsError, load_settings
from livekit_signaling.domain.publishers import TrustedPublishers
from livekit_signaling.schemas.codec import REDACTED, encode_event, redact_tokens
from livekit_signaling.schemas.events import (
    Credentials,
    CredentialsEvent,
    EventEnvelope,
    ForceMuted,
    JoinSuccess,
    PopoutStreamAccessToken,
    RestrictionsDisabledState,
)
from livekit_signaling.transport.controller import connection_user

BASE = {"LIVEKIT_URL": "http://lk:7880", "LIVEKIT_API_KEY": "key", "LIVEKIT_API_SECRET": "very-secret"}


def test_without_the_setting_every_publisher_is_trusted() -> None:
    assert load_settings(BASE).trusted_publishers is None
    everyone = TrustedPublishers()
    assert everyone.allows(None) and everyone.allows("anybody")


def test_trusted_publishers_are_exactly_the_named_users() -> None:
    settings = load_settings({**BASE, "SIGNALING_TRUSTED_PUBLISHERS": " controller-a, controller-b "})
    assert settings.trusted_publishers == frozenset({"controller-a", "controller-b"})
    trusted = TrustedPublishers(settings.trusted_publishers)
    assert trusted.allows("controller-a") and trusted.allows("controller-b")
    assert not trusted.allows("controller-c")
    assert not trusted.allows("Controller-a")  # RabbitMQ user names are case-sensitive
    assert not trusted.allows(None)
    assert trusted.refusal(None) == "untrusted_publisher: the command has no user_id"
    assert trusted.refusal("mallory") == "untrusted_publisher: user_id 'mallory' is not a trusted publisher"


@pytest.mark.parametrize("value", [",", "a,,b", "a, "])
def test_an_empty_publisher_name_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^SIGNALING_TRUSTED_PUBLISHERS: .* is invalid"):
        load_settings({**BASE, "SIGNALING_TRUSTED_PUBLISHERS": value})


@pytest.mark.parametrize(
    ("url", "user"),
    [
        ("amqp://controller:pw@rabbit:5672/livekit", "controller"),
        ("amqps://ctl%40eu:pw@rabbit:5671/%2F?cafile=/ca.pem", "ctl@eu"),
        ("amqp://rabbit/", "guest"),  # aiormq logs in as guest without a user in the URL
        ("amqps://rabbit:5671/?auth=EXTERNAL&certfile=/c.pem", None),  # the certificate names the user
    ],
)
def test_send_claims_the_user_its_connection_logs_in_as(url: str, user: str | None) -> None:
    assert connection_user(url) == user


def kept_copy(payload: object) -> tuple[dict[str, object], bytes]:
    body = encode_event(EventEnvelope(room="r", participant="p", payload=payload))  # type: ignore[arg-type]
    redacted = redact_tokens(body)
    return json.loads(redacted), redacted


def test_tokens_are_redacted_from_a_kept_copy_of_an_event() -> None:
    credentials = Credentials(room="r", token="eyJ.secret.1", public_url="wss://lk")
    join, raw = kept_copy(
        JoinSuccess(credentials=credentials, microphone_restriction_state=RestrictionsDisabledState())
    )
    assert b"secret" not in raw
    # Everything else stays, so that the dead letter still says what was not delivered to whom.
    assert join == {
        "room": "r",
        "participant": "p",
        "payload": {
            "message": "join_success",
            "credentials": {"room": "r", "token": REDACTED, "public_url": "wss://lk"},
            "microphone_restriction_state": {"type": "disabled"},
        },
    }
    fresh, raw = kept_copy(CredentialsEvent(room="r", token="eyJ.secret.2", public_url="wss://lk"))
    assert b"secret" not in raw and fresh["payload"] == {
        "message": "credentials", "room": "r", "token": REDACTED, "public_url": "wss://lk"
    }  # fmt: skip
    popout, raw = kept_copy(PopoutStreamAccessToken(token="eyJ.secret.3"))
    assert b"secret" not in raw and popout["payload"] == {
        "message": "popout_stream_access_token",
        "token": REDACTED,
    }
    muted, _ = kept_copy(ForceMuted(moderator="m"))
    assert muted["payload"] == {"message": "force_muted", "moderator": "m"}

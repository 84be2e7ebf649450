"""The wire contract: the seed's examples decode and encode back unchanged; bad input is refused with a
precise reason; the checked-in JSON Schema files are current."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from livekit_signaling.schemas import asyncapi, codec
from livekit_signaling.schemas.answers import ANSWERS
from livekit_signaling.schemas.commands import Command
from livekit_signaling.schemas.events import (
    CredentialsEvent,
    ErrorEvent,
    Event,
    ForceMuted,
    MicrophoneRestrictionsDisabled,
    MicrophoneRestrictionsEnabled,
    PopoutStreamAccessToken,
    ScreenSharePermissionsUpdated,
)
from livekit_signaling.schemas.jsonschema import main as jsonschema_main
from livekit_signaling.schemas.jsonschema import normalise_prose, schemas

IDS = [
    "00000000-0000-0000-0000-000000000001",
    "00000000-0000-0000-0000-000000000002",
    "00000000-0000-0000-0000-000000000003",
]

# The command examples of the seed text, verbatim.
SEED_COMMANDS = [
    {"action": "create_new_access_token"},
    {"action": "force_mute", "participants": IDS},
    {"action": "grant_screen_share_permission", "participants": IDS},
    {"action": "revoke_screen_share_permission", "participants": IDS},
    {"action": "enable_microphone_restrictions", "unrestricted_participants": IDS},
    {"action": "disable_microphone_restrictions"},
    {"action": "request_popout_stream_access_token"},
]

# One event of each kind the seed's field tables describe.
SEED_EVENTS = [
    {
        "message": "credentials",
        "room": "r",
        "token": "t",
        "public_url": "wss://lk",
        "service_url": "http://lk",
    },
    {"message": "credentials", "room": "r", "token": "t", "public_url": "wss://lk"},
    {"message": "microphone_restrictions_enabled", "unrestricted_participants": IDS},
    {"message": "microphone_restrictions_disabled"},
    {"message": "force_muted", "moderator": IDS[0]},
    {"message": "popout_stream_access_token", "token": "t"},
    {"message": "screen_share_permissions_updated", "grant": True, "participants": IDS},
    {"message": "error", "error": "livekit_unavailable"},
    {"message": "error", "error": "insufficient_permissions"},
    {
        "message": "join_success",
        "credentials": {"room": "r", "token": "t", "public_url": "wss://lk"},
        "microphone_restriction_state": {"type": "enabled", "unrestricted_participants": IDS},
    },
    {
        "message": "join_success",
        "credentials": {"room": "r", "token": "t", "public_url": "wss://lk"},
        "microphone_restriction_state": {"type": "disabled"},
    },
]


@pytest.mark.parametrize("example", SEED_COMMANDS, ids=lambda e: e["action"])
def test_seed_command_examples_round_trip(example: dict[str, object]) -> None:
    raw = json.dumps(example).encode()
    command = codec.decode_command(msgspec.Raw(raw))
    assert json.loads(codec.encode(command)) == example


@pytest.mark.parametrize("example", SEED_EVENTS, ids=lambda e: str(e["message"]))
def test_seed_event_shapes_round_trip(example: dict[str, object]) -> None:
    event = msgspec.json.decode(json.dumps(example).encode(), type=Event)  # type: ignore[arg-type]
    assert json.loads(codec.encode(event)) == example


def test_event_types_carry_the_seed_message_names() -> None:
    assert (
        json.loads(codec.encode(CredentialsEvent(room="r", token="t", public_url="u")))["message"]
        == "credentials"
    )
    assert (
        json.loads(codec.encode(MicrophoneRestrictionsDisabled()))["message"]
        == "microphone_restrictions_disabled"
    )
    assert (
        json.loads(codec.encode(MicrophoneRestrictionsEnabled(unrestricted_participants=[])))[
            "unrestricted_participants"
        ]
        == []
    )
    assert json.loads(codec.encode(ForceMuted(moderator="m"))) == {"message": "force_muted", "moderator": "m"}
    assert (
        json.loads(codec.encode(PopoutStreamAccessToken(token="t")))["message"]
        == "popout_stream_access_token"
    )
    updated = ScreenSharePermissionsUpdated(grant=False, participants=["a"])
    assert json.loads(codec.encode(updated))["message"] == "screen_share_permissions_updated"
    assert json.loads(codec.encode(ErrorEvent(error="livekit_unavailable"))) == {
        "message": "error",
        "error": "livekit_unavailable",
    }


def test_envelope_decodes_with_default_kind() -> None:
    body = b'{"room":"r:1","participant":"p-1","role":"guest","payload":{"action":"join"}}'
    envelope = codec.decode_envelope(body)
    assert (envelope.room, envelope.participant, envelope.role, envelope.kind) == (
        "r:1",
        "p-1",
        "guest",
        "user",
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "malformed"),
        (b"[]", "Expected `object`"),
        (b'{"room":"r","participant":"p","payload":{}}', "missing required field `role`"),
        (b'{"room":"r.x","participant":"p","role":"user","payload":{}}', "$.room"),
        (b'{"room":"r","participant":"p#","role":"user","payload":{}}', "$.participant"),
        (b'{"room":"r","participant":"p","role":"admin","payload":{}}', "$.role"),
        (b'{"room":"r","participant":"p","role":"user","kind":"bot","payload":{}}', "$.kind"),
        (b'{"room":"","participant":"p","role":"user","payload":{}}', "$.room"),
        (b'{"room":"' + b"r" * 129 + b'","participant":"p","role":"user","payload":{}}', "$.room"),
        (b'{"room":"r","participant":"p","role":"user","payload":{},"extra":1}', "extra"),
    ],
)
def test_bad_envelopes_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(codec.MalformedEnvelope, match=None) as refused:
        codec.decode_envelope(body)
    assert reason.lower() in str(refused.value).lower()


def test_oversize_body_is_refused_before_parsing() -> None:
    with pytest.raises(codec.MalformedEnvelope, match="exceeds the limit"):
        codec.decode_envelope(b" " * 70_000, max_bytes=65536)


def test_participant_lists_are_bounded() -> None:
    too_many = json.dumps({"action": "force_mute", "participants": ["p"] * 10_001}).encode()
    with pytest.raises(codec.InvalidPayload, match="length"):
        codec.decode_command(msgspec.Raw(too_many))


def test_checked_in_json_schemas_are_current() -> None:
    schemas_dir = Path(__file__).resolve().parents[2] / "schemas"
    assert jsonschema_main(["--check", "--dir", str(schemas_dir)]) == 0


def _indent_continuations(node: object) -> object:
    """The schema as msgspec 0.22 wrote it: a docstring's later lines keep the class body's indentation."""
    if isinstance(node, dict):
        return {
            key: value.replace("\n", "\n    ")
            if key == "description" and isinstance(value, str)
            else _indent_continuations(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_indent_continuations(item) for item in node]
    return node


def test_generated_descriptions_do_not_depend_on_docstring_formatting() -> None:
    # msgspec 0.22 kept the indentation of a docstring's later lines, 0.23 strips it, Python 3.13 strips
    # it itself: the committed files must come out the same whichever formatting the library gives (a
    # fresh install once made CI fail on this).
    for name, schema in schemas().items():
        as_022_wrote_it = _indent_continuations(schema)
        assert as_022_wrote_it != schema, name  # the contract does carry multi-line descriptions
        assert normalise_prose(as_022_wrote_it) == schema, name


def _prose(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [v for k, v in node.items() if k in {"description", "summary"} and isinstance(v, str)]
        return own + [text for value in node.values() for text in _prose(value)]
    if isinstance(node, list):
        return [text for item in node for text in _prose(item)]
    return []


def test_generated_files_hold_no_docstring_indentation() -> None:
    documents = [*schemas().values(), normalise_prose(asyncapi.build())]
    texts = [text for document in documents for text in _prose(document)]
    assert any("\n" in text for text in texts)  # multi-line docstrings are among them
    for text in texts:
        assert not any(line.startswith(" ") for line in text.splitlines()), text


def test_asyncapi_states_which_events_answer_each_command() -> None:
    """Generators see the request/answer relation: one send operation per command whose ``reply`` names
    the events that can answer it, and the correlation of both sides (message_id -> correlation_id)."""
    document = asyncapi.build()
    messages = document["components"]["messages"]
    sends = {
        name: operation for name, operation in document["operations"].items() if operation["action"] == "send"
    }
    assert len(sends) == len(Command.__args__)
    for kind, answers in ANSWERS.items():
        tag = kind.__struct_config__.tag
        operation = sends["send" + "".join(word.capitalize() for word in tag.split("_"))]
        assert operation["messages"] == [{"$ref": f"#/channels/commands/messages/command_{tag}"}]
        assert operation["reply"]["channel"] == {"$ref": "#/channels/events"}
        replies = [ref["$ref"].rsplit("/", 1)[-1] for ref in operation["reply"]["messages"]]
        assert replies == [f"event_{answer.__struct_config__.tag}" for answer in answers]
    correlations = document["components"]["correlationIds"]
    assert correlations["command"]["location"] == "$message.header#/message_id"
    assert correlations["answered_command"]["location"] == "$message.header#/correlation_id"
    for name, message in messages.items():
        side = "command" if name.startswith("command.") else "answered_command"
        assert message["correlationId"] == {"$ref": f"#/components/correlationIds/{side}"}

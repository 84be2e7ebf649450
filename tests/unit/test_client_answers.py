"""When the client has all of a command's answer that it can wait for (``AnswerWatch``), and the envelope
it publishes, checked as the service checks it; no broker."""

from __future__ import annotations

import pytest

from livekit_signaling.client.answers import AnswerWatch
from livekit_signaling.schemas import codec
from livekit_signaling.schemas.answers import ANSWERS
from livekit_signaling.schemas.commands import (
    Close,
    Command,
    CreateNewAccessToken,
    DisableMicrophoneRestrictions,
    EnableMicrophoneRestrictions,
    ForceMute,
    GrantScreenSharePermission,
    Join,
    Leave,
    RequestPopoutStreamAccessToken,
    RevokeScreenSharePermission,
)
from livekit_signaling.schemas.events import (
    Credentials,
    CredentialsEvent,
    ErrorEvent,
    Event,
    EventEnvelope,
    ForceMuted,
    JoinSuccess,
    MicrophoneRestrictionsDisabled,
    MicrophoneRestrictionsEnabled,
    PopoutStreamAccessToken,
    RestrictionsDisabledState,
    ScreenSharePermissionsUpdated,
)

SENDER = "mod"


def to(participant: str, payload: Event) -> EventEnvelope:
    return EventEnvelope(room="r", participant=participant, payload=payload)


def completes_at(command: Command, events: list[EventEnvelope]) -> int | None:
    """After how many of ``events`` the watch says complete (0: before any), None: never."""
    watch = AnswerWatch(command, SENDER)
    if watch.complete:
        return 0
    for count, event in enumerate(events, start=1):
        if watch.add(event):
            return count
    return None


JOINED = JoinSuccess(
    credentials=Credentials(room="r", token="t", public_url="wss://x"),
    microphone_restriction_state=RestrictionsDisabledState(),
)
UNKNOWN = ErrorEvent(error="unknown_participants", participants=["ghost"])


@pytest.mark.parametrize(
    ("command", "events", "expected"),
    [
        (Join(), [to(SENDER, JOINED)], 1),
        (CreateNewAccessToken(), [to(SENDER, CredentialsEvent(room="r", token="t", public_url="u"))], 1),
        (RequestPopoutStreamAccessToken(), [to(SENDER, PopoutStreamAccessToken(token="t"))], 1),
        # An error to the sender is the last event of every command.
        (Join(), [to(SENDER, ErrorEvent(error="livekit_unavailable"))], 1),
        (Leave(), [to(SENDER, ErrorEvent(error="livekit_unavailable"))], 1),
        (Close(), [], None),
        # The screen-share update names only the known targets; the unknown ones come in an error after it.
        (
            GrantScreenSharePermission(participants=["a", "ghost"]),
            [to(SENDER, ScreenSharePermissionsUpdated(grant=True, participants=["a"])), to(SENDER, UNKNOWN)],
            2,
        ),
        (
            RevokeScreenSharePermission(participants=["a", "a"]),
            [to(SENDER, ScreenSharePermissionsUpdated(grant=False, participants=["a"]))],
            1,
        ),
        # The restrictions are broadcast: the sender's own copy ends the wait, whoever came first.
        (
            EnableMicrophoneRestrictions(unrestricted_participants=[]),
            [
                to("a", MicrophoneRestrictionsEnabled(unrestricted_participants=[])),
                to(SENDER, MicrophoneRestrictionsEnabled(unrestricted_participants=[])),
            ],
            2,
        ),
        (
            DisableMicrophoneRestrictions(),
            [to("a", MicrophoneRestrictionsDisabled()), to(SENDER, MicrophoneRestrictionsDisabled())],
            2,
        ),
        # force_mute: every target muted, or the sender's error; a target with no open microphone gets
        # nothing, so without an error that wait only ends at the timeout.
        (
            ForceMute(participants=["a", "b"]),
            [to("a", ForceMuted(moderator=SENDER)), to("b", ForceMuted(moderator=SENDER))],
            2,
        ),
        (ForceMute(participants=["a", "b"]), [to("a", ForceMuted(moderator=SENDER))], None),
        (
            ForceMute(participants=["a", "ghost"]),
            [to("a", ForceMuted(moderator=SENDER)), to(SENDER, UNKNOWN)],
            2,
        ),
        (ForceMute(participants=[]), [], 0),
    ],
)
def test_a_command_is_answered_by_its_rule(
    command: Command, events: list[EventEnvelope], expected: int
) -> None:
    assert completes_at(command, events) == expected


def test_an_event_to_someone_else_does_not_answer_the_sender() -> None:
    assert completes_at(Join(), [to("a", JOINED)]) is None
    assert completes_at(Join(), [to("a", ErrorEvent(error="insufficient_permissions"))]) is None


def test_every_command_has_its_answers_and_an_error() -> None:
    assert set(ANSWERS) == set(Command.__args__)
    assert all(answers[-1] is ErrorEvent for answers in ANSWERS.values())


def test_the_published_envelope_is_checked_as_the_service_checks_it() -> None:
    body = codec.encode_command("r:1", "p", ForceMute(participants=["a"]), role="moderator", kind="sip")
    envelope = codec.decode_envelope(body)
    assert (envelope.room, envelope.participant, envelope.role, envelope.kind) == (
        "r:1",
        "p",
        "moderator",
        "sip",
    )
    assert codec.decode_command(envelope.payload) == ForceMute(participants=["a"])
    # Dots would be read as routing-key structure: the service would dead-letter it.
    with pytest.raises(codec.MalformedEnvelope, match=r"\$\.room"):
        codec.encode_command("r.1", "p", Join(), role="user", kind="user")
    with pytest.raises(codec.InvalidPayload, match=r"\$\.participants\[0\]"):
        codec.encode_command("r", "p", ForceMute(participants=["a b"]), role="moderator", kind="user")

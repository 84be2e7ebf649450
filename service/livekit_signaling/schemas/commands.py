"""Commands: the envelope upstream controllers publish, and the seed's command payloads inside it."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

#: Ids travel inside AMQP routing keys (``room.<room>.participant.<id>``), so they may not contain
#: ``.``, ``#``, ``*`` or anything else a topic binding would read as structure.
ID_PATTERN = r"^[A-Za-z0-9_:\-]+$"
MAX_ID_LENGTH = 128
#: A moderator naming more participants than a room can hold is a bug or an attack; bound the list so
#: that decoding never allocates without limit.
MAX_PARTICIPANTS_PER_COMMAND = 10_000

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, min_length=1, max_length=MAX_ID_LENGTH)]
IdList = Annotated[list[Id], msgspec.Meta(max_length=MAX_PARTICIPANTS_PER_COMMAND)]

Role = Literal["moderator", "user", "guest"]
Kind = Literal["user", "guest", "sip", "recorder"]


class _Payload(msgspec.Struct, tag_field="action", forbid_unknown_fields=True, frozen=True):
    """Base of every command payload: ``action`` names the variant."""


class CreateNewAccessToken(_Payload, tag="create_new_access_token", frozen=True):
    """Ask for fresh credentials; answered with a ``credentials`` event."""


class ForceMute(_Payload, tag="force_mute", frozen=True):
    """Mute the listed participants' microphones (moderators only)."""

    participants: IdList


class GrantScreenSharePermission(_Payload, tag="grant_screen_share_permission", frozen=True):
    """Allow the listed participants to share their screen (moderators only)."""

    participants: IdList


class RevokeScreenSharePermission(_Payload, tag="revoke_screen_share_permission", frozen=True):
    """Stop the listed participants from sharing their screen (moderators only)."""

    participants: IdList


class EnableMicrophoneRestrictions(_Payload, tag="enable_microphone_restrictions", frozen=True):
    """Only moderators and ``unrestricted_participants`` may use a microphone (moderators only)."""

    unrestricted_participants: IdList


class DisableMicrophoneRestrictions(_Payload, tag="disable_microphone_restrictions", frozen=True):
    """Everybody may use a microphone again (moderators only)."""


class RequestPopoutStreamAccessToken(_Payload, tag="request_popout_stream_access_token", frozen=True):
    """Ask for a hidden, subscribe-only token for a popout stream."""


class Join(_Payload, tag="join", frozen=True):
    """Lifecycle (controller only): the sender joined the room; answered with ``join_success``."""


class Leave(_Payload, tag="leave", frozen=True):
    """Lifecycle (controller only): the sender left; its LiveKit identities are removed."""


class Close(_Payload, tag="close_room", frozen=True):
    """Lifecycle (controller only): the room is over; the LiveKit room and all its state go."""


Command = (
    CreateNewAccessToken
    | ForceMute
    | GrantScreenSharePermission
    | RevokeScreenSharePermission
    | EnableMicrophoneRestrictions
    | DisableMicrophoneRestrictions
    | RequestPopoutStreamAccessToken
    | Join
    | Leave
    | Close
)

#: Commands only a moderator may send; checked before anything else is done.
MODERATOR_COMMANDS: tuple[type[_Payload], ...] = (
    ForceMute,
    GrantScreenSharePermission,
    RevokeScreenSharePermission,
    EnableMicrophoneRestrictions,
    DisableMicrophoneRestrictions,
)


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a controller publishes to ``room.<room>``.

    ``payload`` stays raw here: a valid envelope with a bad payload still has a sender who can be told
    (``invalid_command``), while a bad envelope has nobody and is dead-lettered.
    """

    room: Id
    participant: Id
    role: Role
    payload: msgspec.Raw
    kind: Kind = "user"

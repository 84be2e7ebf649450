"""Events: what the service publishes to ``room.<room>.participant.<participant>``."""

from __future__ import annotations

from typing import Literal

import msgspec


class Credentials(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where and with what a client connects to LiveKit (inside ``join_success``)."""

    room: str
    token: str
    public_url: str
    service_url: str | None = None


class RestrictionsDisabledState(msgspec.Struct, tag_field="type", tag="disabled", frozen=True):
    """Everybody may unmute."""


class RestrictionsEnabledState(msgspec.Struct, tag_field="type", tag="enabled", frozen=True):
    """Only moderators and ``unrestricted_participants`` may unmute (the seed's "Must be disabled"
    under this variant is a copy error; the tag is ``enabled``)."""

    unrestricted_participants: list[str]


MicrophoneRestrictionState = RestrictionsDisabledState | RestrictionsEnabledState


class _Event(msgspec.Struct, tag_field="message", frozen=True, omit_defaults=True):
    """Base of every event payload: ``message`` names the variant."""


class JoinSuccess(_Event, tag="join_success", frozen=True):
    """The module's fields of the controller's ``join_success`` control event."""

    credentials: Credentials
    microphone_restriction_state: MicrophoneRestrictionState


class CredentialsEvent(_Event, tag="credentials", frozen=True):
    """Fresh credentials, the answer to ``create_new_access_token``."""

    room: str
    token: str
    public_url: str
    service_url: str | None = None


class MicrophoneRestrictionsEnabled(_Event, tag="microphone_restrictions_enabled", frozen=True):
    unrestricted_participants: list[str]


class MicrophoneRestrictionsDisabled(_Event, tag="microphone_restrictions_disabled", frozen=True):
    pass


class ForceMuted(_Event, tag="force_muted", frozen=True):
    """Sent to each participant whose microphone was actually muted."""

    moderator: str


class PopoutStreamAccessToken(_Event, tag="popout_stream_access_token", frozen=True):
    token: str


class ScreenSharePermissionsUpdated(_Event, tag="screen_share_permissions_updated", frozen=True):
    """To the moderator (the seed's ``message`` value for it is a copy error)."""

    grant: bool
    participants: list[str]


ErrorCode = Literal[
    # from the seed
    "livekit_unavailable",
    "insufficient_permissions",
    # added by this service; clients that know only the seed's codes still see ``message: error``
    "invalid_command",
    "unknown_participants",
]


class ErrorEvent(_Event, tag="error", frozen=True):
    """An error for the sender of a command.

    ``participants`` is set for ``unknown_participants``; ``detail`` says what was wrong with an
    ``invalid_command`` (never a secret).
    """

    error: ErrorCode
    participants: list[str] | None = None
    detail: str | None = None


Event = (
    JoinSuccess
    | CredentialsEvent
    | MicrophoneRestrictionsEnabled
    | MicrophoneRestrictionsDisabled
    | ForceMuted
    | PopoutStreamAccessToken
    | ScreenSharePermissionsUpdated
    | ErrorEvent
)


class EventEnvelope(msgspec.Struct, frozen=True):
    """One event for one recipient, as published."""

    room: str
    participant: str
    payload: Event

"""Which events answer which command: the request/answer relation of the contract.

Every event a command causes carries the command's AMQP ``message_id`` as its ``correlation_id``. An
``error`` goes to the command's sender and is always the last event of its command. What else a command
causes, and to whom, is in ``docs/contract/index.md`` ("Commands and their answers").
"""

from __future__ import annotations

from livekit_signaling.schemas.commands import (
    Close,
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
    CredentialsEvent,
    ErrorEvent,
    ForceMuted,
    JoinSuccess,
    MicrophoneRestrictionsDisabled,
    MicrophoneRestrictionsEnabled,
    PopoutStreamAccessToken,
    ScreenSharePermissionsUpdated,
)

#: The events each command can cause (any command can be answered with an ``error``).
ANSWERS: dict[type, tuple[type, ...]] = {
    Join: (JoinSuccess, ErrorEvent),
    CreateNewAccessToken: (CredentialsEvent, ErrorEvent),
    RequestPopoutStreamAccessToken: (PopoutStreamAccessToken, ErrorEvent),
    ForceMute: (ForceMuted, ErrorEvent),
    GrantScreenSharePermission: (ScreenSharePermissionsUpdated, ErrorEvent),
    RevokeScreenSharePermission: (ScreenSharePermissionsUpdated, ErrorEvent),
    EnableMicrophoneRestrictions: (MicrophoneRestrictionsEnabled, ErrorEvent),
    DisableMicrophoneRestrictions: (MicrophoneRestrictionsDisabled, ErrorEvent),
    Leave: (ErrorEvent,),
    Close: (ErrorEvent,),
}

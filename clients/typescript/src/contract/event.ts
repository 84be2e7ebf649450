/* Generated from schemas/event.schema.json by clients/typescript/scripts/generate.mjs (npm run generate); do not edit. */

/**
 * An event as the service publishes it to ``room.<room>.participant.<participant>``.
 */
export interface EventMessage {
  participant: string;
  payload:
    | JoinSuccess
    | CredentialsEvent
    | MicrophoneRestrictionsEnabled
    | MicrophoneRestrictionsDisabled
    | ForceMuted
    | PopoutStreamAccessToken
    | ScreenSharePermissionsUpdated
    | ErrorEvent;
  room: string;
}
/**
 * The module's fields of the controller's ``join_success`` control event.
 */
export interface JoinSuccess {
  credentials: Credentials;
  message: "join_success";
  microphone_restriction_state: RestrictionsDisabledState | RestrictionsEnabledState;
}
/**
 * Where and with what a client connects to LiveKit (inside ``join_success``).
 */
export interface Credentials {
  public_url: string;
  room: string;
  service_url?: string | null;
  token: string;
}
/**
 * Everybody may unmute.
 */
export interface RestrictionsDisabledState {
  type: "disabled";
}
/**
 * Only moderators and ``unrestricted_participants`` may unmute (the seed's "Must be disabled"
 * under this variant is a copy error; the tag is ``enabled``).
 */
export interface RestrictionsEnabledState {
  type: "enabled";
  unrestricted_participants: string[];
}
/**
 * Fresh credentials, the answer to ``create_new_access_token``.
 */
export interface CredentialsEvent {
  message: "credentials";
  public_url: string;
  room: string;
  service_url?: string | null;
  token: string;
}
export interface MicrophoneRestrictionsEnabled {
  message: "microphone_restrictions_enabled";
  unrestricted_participants: string[];
}
export interface MicrophoneRestrictionsDisabled {
  message: "microphone_restrictions_disabled";
}
/**
 * Sent to each participant whose microphone was actually muted.
 */
export interface ForceMuted {
  message: "force_muted";
  moderator: string;
}
export interface PopoutStreamAccessToken {
  message: "popout_stream_access_token";
  token: string;
}
/**
 * To the moderator (the seed's ``message`` value for it is a copy error).
 */
export interface ScreenSharePermissionsUpdated {
  grant: boolean;
  message: "screen_share_permissions_updated";
  participants: string[];
}
/**
 * An error for the sender of a command.
 *
 * ``participants`` is set for ``unknown_participants``; ``detail`` says what was wrong with an
 * ``invalid_command`` (never a secret).
 */
export interface ErrorEvent {
  detail?: string | null;
  error: "insufficient_permissions" | "invalid_command" | "livekit_unavailable" | "unknown_participants";
  message: "error";
  participants?: string[] | null;
}

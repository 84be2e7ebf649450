/* Generated from schemas/command.schema.json by clients/typescript/scripts/generate.mjs (npm run generate); do not edit. */

/**
 * A command as upstream controllers publish it to ``room.<room>`` on the command exchange.
 *
 * (The service decodes ``payload`` in a second step so that a bad payload can still be answered.)
 */
export interface CommandEnvelope {
  kind?: "guest" | "recorder" | "sip" | "user";
  participant: string;
  payload:
    | CreateNewAccessToken
    | ForceMute
    | GrantScreenSharePermission
    | RevokeScreenSharePermission
    | EnableMicrophoneRestrictions
    | DisableMicrophoneRestrictions
    | RequestPopoutStreamAccessToken
    | Join
    | Leave
    | Close;
  role: "guest" | "moderator" | "user";
  room: string;
}
/**
 * Ask for fresh credentials; answered with a ``credentials`` event.
 */
export interface CreateNewAccessToken {
  action: "create_new_access_token";
}
/**
 * Mute the listed participants' microphones (moderators only).
 */
export interface ForceMute {
  action: "force_mute";
  /**
   * @maxItems 10000
   */
  participants: string[];
}
/**
 * Allow the listed participants to share their screen (moderators only).
 */
export interface GrantScreenSharePermission {
  action: "grant_screen_share_permission";
  /**
   * @maxItems 10000
   */
  participants: string[];
}
/**
 * Stop the listed participants from sharing their screen (moderators only).
 */
export interface RevokeScreenSharePermission {
  action: "revoke_screen_share_permission";
  /**
   * @maxItems 10000
   */
  participants: string[];
}
/**
 * Only moderators and ``unrestricted_participants`` may use a microphone (moderators only).
 */
export interface EnableMicrophoneRestrictions {
  action: "enable_microphone_restrictions";
  /**
   * @maxItems 10000
   */
  unrestricted_participants: string[];
}
/**
 * Everybody may use a microphone again (moderators only).
 */
export interface DisableMicrophoneRestrictions {
  action: "disable_microphone_restrictions";
}
/**
 * Ask for a hidden, subscribe-only token for a popout stream.
 */
export interface RequestPopoutStreamAccessToken {
  action: "request_popout_stream_access_token";
}
/**
 * Lifecycle (controller only): the sender joined the room; answered with ``join_success``.
 */
export interface Join {
  action: "join";
}
/**
 * Lifecycle (controller only): the sender left; its LiveKit identities are removed.
 */
export interface Leave {
  action: "leave";
}
/**
 * Lifecycle (controller only): the room is over; the LiveKit room and all its state go.
 */
export interface Close {
  action: "close_room";
}

"""``schemas/asyncapi.yaml``: the contract as an AsyncAPI 3.0 document, generated from the msgspec types.

``python -m livekit_signaling.schemas.asyncapi`` rewrites it; ``--check`` fails when the checked-in
file is stale. Channels are the command and event exchanges with their routing keys; every message
carries its JSON Schema (shared with ``schemas/*.schema.json``) and the seed text's examples.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from livekit_signaling import __version__
from livekit_signaling.schemas.answers import ANSWERS
from livekit_signaling.schemas.commands import Command
from livekit_signaling.schemas.events import Event
from livekit_signaling.schemas.jsonschema import CommandEnvelope, EventMessage, normalise_prose
from livekit_signaling.schemas.routing import COMMAND_ADDRESS, EVENT_ADDRESS

_REF = "#/components/schemas/{name}"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_IDS = ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"]
_ROOM = "6e9b9a9c-1d6b-4c7e-9d3c-3f2a1b0c9d8e"

# The seed's examples (commands) and field tables (events), one per message.
COMMAND_EXAMPLES: dict[str, dict[str, Any]] = {
    "join": {"action": "join"},
    "leave": {"action": "leave"},
    "close_room": {"action": "close_room"},
    "create_new_access_token": {"action": "create_new_access_token"},
    "force_mute": {"action": "force_mute", "participants": _IDS},
    "grant_screen_share_permission": {"action": "grant_screen_share_permission", "participants": _IDS},
    "revoke_screen_share_permission": {"action": "revoke_screen_share_permission", "participants": _IDS},
    "enable_microphone_restrictions": {
        "action": "enable_microphone_restrictions",
        "unrestricted_participants": _IDS,
    },
    "disable_microphone_restrictions": {"action": "disable_microphone_restrictions"},
    "request_popout_stream_access_token": {"action": "request_popout_stream_access_token"},
}
EVENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "join_success": {
        "message": "join_success",
        "credentials": {"room": _ROOM, "token": "<jwt>", "public_url": "wss://livekit.example.com"},
        "microphone_restriction_state": {"type": "enabled", "unrestricted_participants": _IDS[:1]},
    },
    "credentials": {
        "message": "credentials",
        "room": _ROOM,
        "token": "<jwt>",
        "public_url": "wss://livekit.example.com",
    },
    "microphone_restrictions_enabled": {
        "message": "microphone_restrictions_enabled",
        "unrestricted_participants": _IDS,
    },
    "microphone_restrictions_disabled": {"message": "microphone_restrictions_disabled"},
    "force_muted": {"message": "force_muted", "moderator": _IDS[0]},
    "popout_stream_access_token": {"message": "popout_stream_access_token", "token": "<jwt>"},
    "screen_share_permissions_updated": {
        "message": "screen_share_permissions_updated",
        "grant": True,
        "participants": _IDS,
    },
    "error": {"message": "error", "error": "livekit_unavailable"},
}


def _tag(kind: Any) -> str:
    return str(kind.__struct_config__.tag)


def _operation_id(kind: Any) -> str:
    """``send`` and the command's tag in camel case: ``sendForceMute``."""
    return "send" + "".join(word.capitalize() for word in _tag(kind).split("_"))


def _asyncapi_discriminators(value: Any) -> Any:
    """msgspec writes OpenAPI's ``discriminator`` object; an AsyncAPI schema names just the property."""
    if isinstance(value, dict):
        return {
            key: item["propertyName"] if key == "discriminator" and isinstance(item, dict)
            else _asyncapi_discriminators(item)
            for key, item in value.items()
        }  # fmt: skip
    if isinstance(value, list):
        return [_asyncapi_discriminators(item) for item in value]
    return value


def build(
    command_exchange: str = "livekit.commands", event_exchange: str = "livekit.events"
) -> dict[str, Any]:
    command_types = list(Command.__args__)
    event_types = list(Event.__args__)
    _, components = msgspec.json.schema_components(
        [CommandEnvelope, EventMessage, *command_types, *event_types], ref_template=_REF
    )
    components = _asyncapi_discriminators(components)
    envelope = components["CommandEnvelope"]
    event_message = components["EventMessage"]

    def message(
        kind: Any, envelope_schema: dict[str, Any], suffix: str, example: dict[str, Any], correlation: str
    ) -> dict[str, Any]:
        """One message: its envelope schema with this variant's payload, and the seed's example."""
        payload: dict[str, Any] = json.loads(json.dumps(envelope_schema))
        payload["properties"]["payload"] = {"$ref": _REF.format(name=kind.__name__)}
        payload["title"] = f"{kind.__name__}{suffix}"
        return {
            "name": _tag(kind),
            "title": kind.__name__,
            "summary": kind.__doc__ or "",
            "contentType": "application/json",
            "payload": payload,
            "correlationId": {"$ref": f"#/components/correlationIds/{correlation}"},
            "examples": [{"name": _tag(kind), "payload": example}],
        }

    messages: dict[str, Any] = {}
    for kind in command_types:
        example = {
            "room": _ROOM,
            "participant": _IDS[0],
            "role": "moderator",
            "payload": COMMAND_EXAMPLES[_tag(kind)],
        }
        messages[f"command.{_tag(kind)}"] = message(kind, envelope, "Command", example, "command")
    for kind in event_types:
        example = {"room": _ROOM, "participant": _IDS[0], "payload": EVENT_EXAMPLES[_tag(kind)]}
        messages[f"event.{_tag(kind)}"] = {
            **message(kind, event_message, "Message", example, "answered_command"),
            "bindings": {"amqp": {"messageType": _tag(kind), "bindingVersion": "0.3.0"}},
        }
    # Component schemas that messages reference (the envelopes are inlined per message above).
    schemas = {
        name: schema for name, schema in components.items() if name not in {"CommandEnvelope", "EventMessage"}
    }

    def channel_messages(prefix: str) -> dict[str, Any]:
        return {
            name.replace(".", "_"): {"$ref": f"#/components/messages/{name}"}
            for name in messages
            if name.startswith(prefix)
        }

    def send_operation(kind: Any) -> dict[str, Any]:
        """Sending one command, with the events that can answer it (correlated by message_id)."""
        answers = ", ".join(f"`{_tag(answer)}`" for answer in ANSWERS[kind])
        return {
            "action": "send",
            "channel": {"$ref": "#/channels/commands"},
            "summary": f"A controller publishes `{_tag(kind)}` for a room. The events that can answer "
            f"it, each with its message_id as correlation_id: {answers}.",
            "messages": [{"$ref": f"#/channels/commands/messages/command_{_tag(kind)}"}],
            "reply": {
                "channel": {"$ref": "#/channels/events"},
                "messages": [
                    {"$ref": f"#/channels/events/messages/event_{_tag(answer)}"} for answer in ANSWERS[kind]
                ],
            },
        }

    def exchange(name: str) -> dict[str, Any]:
        return {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": name,
                    "type": "topic",
                    "durable": True,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": "0.3.0",
            }
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "livekit-signaling",
            "version": __version__,
            "description": "Commands that controllers publish for a room, and the events the LiveKit "
            "signaling service publishes back to each participant. Generated from livekit_signaling.schemas; "
            "do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "rabbitmq:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The platform's RabbitMQ (AMQP_URL).",
            }
        },
        "channels": {
            "commands": {
                "address": COMMAND_ADDRESS,
                "title": "Commands",
                "description": f"Topic exchange `{command_exchange}` (SIGNALING_COMMAND_EXCHANGE). The "
                "routing key's room must be the envelope's room. The AMQP message_id identifies the command.",
                "parameters": {"room": {"description": "LiveKit room name: 1-128 of [A-Za-z0-9_:-]."}},
                "messages": channel_messages("command."),
                "bindings": exchange(command_exchange),
            },
            "events": {
                "address": EVENT_ADDRESS,
                "title": "Events",
                "description": f"Topic exchange `{event_exchange}` (SIGNALING_EVENT_EXCHANGE), one "
                "persistent message per recipient; correlation_id = the command's message_id, type = "
                "payload.message.",
                "parameters": {
                    "room": {"description": "LiveKit room name."},
                    "participant": {"description": "The recipient's participant id."},
                },
                "messages": channel_messages("event."),
                "bindings": exchange(event_exchange),
            },
        },
        "operations": {
            **{_operation_id(kind): send_operation(kind) for kind in command_types},
            "receiveEvent": {
                "action": "receive",
                "channel": {"$ref": "#/channels/events"},
                "summary": "A controller receives the events for its participants.",
                "messages": [
                    {"$ref": f"#/channels/events/messages/{name}"} for name in channel_messages("event.")
                ],
            },
        },
        "components": {
            "messages": messages,
            "schemas": schemas,
            "correlationIds": {
                "command": {
                    "description": "The command's AMQP message_id. Every event the command causes carries "
                    "it as its correlation_id; a command sent again with the same message_id within "
                    "DEDUP_WINDOW_SECONDS is not run again.",
                    "location": "$message.header#/message_id",
                },
                "answered_command": {
                    "description": "The AMQP correlation_id: the message_id of the command this event "
                    "answers (absent when that command had none).",
                    "location": "$message.header#/correlation_id",
                },
            },
        },
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of JSON-like data; strings are JSON-quoted, which YAML reads as they are."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}\n"
        lines = []
        for key, item in value.items():
            key_text = str(key) if _PLAIN_KEY.fullmatch(str(key)) else json.dumps(str(key))
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key_text}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key_text}: {to_yaml(item, indent + 1).strip()}\n")
        return "".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]\n"
        lines = []
        for item in value:
            text = to_yaml(item, indent + 1)
            lines.append(
                f"{pad}- {text.lstrip()}"
                if isinstance(item, dict | list) and item
                else f"{pad}- {text.strip()}\n"
            )
        return "".join(lines)
    return json.dumps(value) + "\n"


def render() -> str:
    document = normalise_prose(build())
    return "# Generated by `python -m livekit_signaling.schemas.asyncapi`; do not edit.\n" + to_yaml(document)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", type=Path, default=Path("schemas/asyncapi.yaml"))
    parser.add_argument("--check", action="store_true", help="fail if the file is stale instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.path.exists() or args.path.read_text() != text:
            sys.stderr.write(
                f"stale: {args.path}; run `python -m livekit_signaling.schemas.asyncapi` and commit\n"
            )
            return 1
        return 0
    args.path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

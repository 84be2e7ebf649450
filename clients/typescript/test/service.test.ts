// Drives the real service (started by tests/contract/test_typescript.py on a uuid-named topology, which
// passes AMQP_URL, SIGNALING_COMMAND_EXCHANGE and SIGNALING_EVENT_EXCHANGE) through the generated contract
// types alone: every envelope is a CommandEnvelope, every event an EventMessage narrowed by its `message`.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { Controller } from "../src/controller.js";
import type { CommandEnvelope } from "../src/contract/command.js";
import type { EventMessage } from "../src/contract/event.js";

function setting(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/contract/test_typescript.py`);
  return value;
}

let controller: Controller;

before(async () => {
  controller = await Controller.connect(setting("AMQP_URL"), {
    commands: setting("SIGNALING_COMMAND_EXCHANGE"),
    events: setting("SIGNALING_EVENT_EXCHANGE"),
  });
});

after(async () => {
  await controller.close();
});

const newRoom = (): string => `ts-${randomUUID()}`;

/** The claims of a JWT, unverified (the emulated LiveKit verifies it when a client connects). */
function claims(token: string): Record<string, unknown> {
  const [, payload] = token.split(".");
  assert.ok(payload, "a JWT has three parts");
  return JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as Record<string, unknown>;
}

async function join(room: string, participant: string, role: CommandEnvelope["role"]): Promise<EventMessage> {
  return controller.ask({ room, participant, role, payload: { action: "join" } });
}

test("a join is answered with the participant's LiveKit credentials", async () => {
  const room = newRoom();
  const event = await join(room, "alice", "moderator");
  assert.equal(event.room, room);
  assert.equal(event.participant, "alice");
  const payload = event.payload;
  assert.equal(payload.message, "join_success");
  if (payload.message !== "join_success") return;
  assert.equal(payload.credentials.room, room);
  assert.match(payload.credentials.public_url, /^wss?:\/\//);
  assert.deepEqual(payload.microphone_restriction_state, { type: "disabled" });
  const token = claims(payload.credentials.token);
  assert.equal(token["sub"], "alice");
  assert.equal((token["video"] as Record<string, unknown>)["room"], room);
});

test("restrictions enabled by a moderator reach every participant and later joiners", async () => {
  const room = newRoom();
  await join(room, "mod", "moderator");
  await join(room, "speaker", "user");
  const toSpeaker = controller.nextEvent((r) => r.event.room === room && r.event.participant === "speaker");

  const enable: CommandEnvelope = {
    room,
    participant: "mod",
    role: "moderator",
    payload: { action: "enable_microphone_restrictions", unrestricted_participants: ["mod"] },
  };
  const answer = await controller.ask(enable);
  assert.deepEqual(answer.payload, { message: "microphone_restrictions_enabled", unrestricted_participants: ["mod"] });
  const copy = await toSpeaker;
  assert.equal(copy.routingKey, `room.${room}.participant.speaker`);
  assert.deepEqual(copy.event.payload, answer.payload);

  const late = await join(room, "latecomer", "user");
  assert.equal(late.payload.message, "join_success");
  if (late.payload.message !== "join_success") return;
  assert.deepEqual(late.payload.microphone_restriction_state, { type: "enabled", unrestricted_participants: ["mod"] });
});

test("a user's moderator command is answered with insufficient_permissions", async () => {
  const room = newRoom();
  await join(room, "mod", "moderator");
  await join(room, "user", "user");
  const answer = await controller.ask({
    room,
    participant: "user",
    role: "user",
    payload: { action: "force_mute", participants: ["mod"] },
  });
  const payload = answer.payload;
  assert.equal(payload.message, "error");
  if (payload.message !== "error") return;
  assert.equal(payload.error, "insufficient_permissions");
});

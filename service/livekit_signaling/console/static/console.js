// The dev console's page: plain JavaScript, no build step. State arrives as server-sent events from
// /console/stream (reset, event, command, rooms); actions are JSON POSTs to /console/commands,
// /console/clients/<action> and /console/livekit/<action>. Everything is rendered with textContent, never
// as HTML.
"use strict";

(() => {
  const MAX_EVENTS = 500;
  const TARGETS = {
    force_mute: ["participants", "Participants to mute"],
    grant_screen_share_permission: ["participants", "Participants"],
    revoke_screen_share_permission: ["participants", "Participants"],
    enable_microphone_restrictions: ["unrestricted_participants", "Unrestricted participants"],
  };
  const SOURCES_TO_PUBLISH = [
    ["camera", "Publish camera"],
    ["microphone", "Publish microphone"],
    ["screen_share", "Share screen"],
  ];

  const state = {
    rooms: [],
    webhooks: true,
    events: new Map(), // seq -> event
    commands: new Map(), // message_id -> command
  };

  const $ = (id) => document.getElementById(id);

  // el("li", {class: "x", data: {k: "v"}, aria: {label: "…"}, onclick: fn}, child, "text", …)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "data") for (const [k, v] of Object.entries(value)) node.dataset[k] = v;
      else if (key === "aria") for (const [k, v] of Object.entries(value)) node.setAttribute(`aria-${k}`, v);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const clock = (at) => new Date(at * 1000).toLocaleTimeString([], { hour12: false });
  const shortId = (id) => (id ? id.slice(0, 8) : "");
  const pretty = (value) => (typeof value === "string" ? value : JSON.stringify(value, null, 2));

  function setStatus(node, text, kind) {
    node.textContent = text;
    node.classList.toggle("ok", kind === "ok");
    node.classList.toggle("bad", kind === "bad");
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    let data = {};
    try {
      data = await response.json();
    } catch (_) {
      data = { error: `HTTP ${response.status}` };
    }
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    return data;
  }

  // -- rooms -------------------------------------------------------------------------------------

  function restrictionText(roomState) {
    if (!roomState) return "unknown";
    const unrestricted = roomState.microphone_restrictions;
    if (unrestricted === null || unrestricted === undefined) return "disabled";
    return unrestricted.length ? `enabled, unrestricted: ${unrestricted.join(", ")}` : "enabled, nobody unrestricted";
  }

  function screenShareText(roomState) {
    const decisions = Object.entries((roomState && roomState.screen_share) || {});
    if (!decisions.length) return "the default for everybody";
    return decisions.map(([who, granted]) => `${who} ${granted ? "granted" : "revoked"}`).join(", ");
  }

  function actionButton(label, ariaLabel, key, action, room, participant, extra) {
    return el(
      "button",
      {
        type: "button",
        class: "small",
        data: { key },
        aria: { label: ariaLabel },
        onclick: () => clientAction(action, room, participant, extra),
      },
      label,
    );
  }

  function trackChips(room, row) {
    const list = el("ul", { class: "chips tracks", data: { sources: row.livekit.tracks.map((t) => t.source).join(" ") } });
    for (const track of row.livekit.tracks) {
      const who = row.identity;
      const verb = track.muted ? "Unmute" : "Mute";
      const extra = { track_sid: track.sid };
      list.append(
        el(
          "li",
          { class: "chip", data: { source: track.source, muted: String(track.muted) } },
          el("span", { class: track.muted ? "muted-track" : "" }, track.source),
          track.muted ? el("span", { class: "no" }, "(muted)") : null,
          actionButton(verb, `${verb} ${track.source} of ${who}`, `${verb}|${room}|${who}|${track.sid}`, verb.toLowerCase(), room, who, extra),
          actionButton("Unpublish", `Unpublish ${track.source} of ${who}`, `unpublish|${room}|${who}|${track.sid}`, "unpublish", room, who, extra),
        ),
      );
    }
    if (!row.livekit.tracks.length) list.append(el("li", { class: "no" }, "no tracks"));
    return list;
  }

  function rosterCell(room, row) {
    const roster = row.roster;
    const cell = el("td", { class: "roster", data: { label: "Service" } }, el("div", { class: "identity" }, row.identity));
    if (roster) {
      cell.append(
        el("div", { class: "facts" }, `${roster.role} · kind ${roster.kind} · popouts ${roster.popouts}`),
        el("button", {
          type: "button",
          class: "small",
          data: { key: `sendas|${room}|${row.identity}` },
          aria: { label: `Send a command as ${row.identity}` },
          onclick: () => useAsSender(room, row.identity, roster),
        }, "Send as"),
      );
    } else {
      cell.append(el("div", { class: "facts" }, row.popout_of ? `popout of ${row.popout_of}` : "not in the roster"));
    }
    return cell;
  }

  function driftNote(row) {
    if (!row.drift.length) return null;
    const repair = row.drift.includes("unknown_identity")
      ? "the room does not know it: reconciliation disconnects it"
      : `the room's state allows ${row.repair_to.length ? row.repair_to.join(", ") : "nothing"}`;
    return el("div", { class: "drift refused", data: { drift: row.drift.join(" ") } }, `drift: ${row.drift.join(", ")} (${repair})`);
  }

  function livekitCell(room, row) {
    const cell = el("td", { class: "livekit", data: { label: "LiveKit" } });
    if (!row.livekit) {
      cell.append(el("span", { class: "no connected" }, "not connected"));
      return cell;
    }
    const p = row.livekit.permission;
    const sources = p.can_publish_sources.length ? p.can_publish_sources.join(", ") : "[] (every source)";
    cell.append(
      el("span", { class: "yes connected" }, `connected (${row.livekit.state.toLowerCase()})`),
      trackChips(room, row),
      el(
        "div",
        { class: "permission", data: { canPublish: String(p.can_publish), sources: p.can_publish_sources.join(" ") } },
        el("div", {}, "can_publish: ", el("span", { class: p.can_publish ? "yes" : "refused" }, String(p.can_publish)), ` · hidden: ${p.hidden}`),
        el("div", {}, `can_publish_sources: ${sources}`),
      ),
    );
    const drift = driftNote(row);
    if (drift) cell.append(drift);
    return cell;
  }

  function repairList(room) {
    if (!room.repairs.length) return null;
    return el(
      "details",
      { class: "repairs" },
      el("summary", {}, `Reconciliation repaired ${room.repairs.length} time(s) here (latest first)`),
      el(
        "ul",
        {},
        room.repairs.map((repair) =>
          el(
            "li",
            { data: { identity: repair.identity } },
            `${clock(repair.at)} ${repair.identity}: ${repair.drift.join(", ")} → `,
            repair.sources === null ? "disconnected" : `may publish ${repair.sources.join(", ") || "nothing"}`,
          ),
        ),
      ),
    );
  }

  async function livekitAction(action, body) {
    const status = $("client-status");
    try {
      const result = await post(`/console/livekit/${action}`, body);
      setStatus(status, result.outcome, result.ok ? "ok" : "bad");
    } catch (error) {
      setStatus(status, `LiveKit ${action}: ${error.message}`, "bad");
    }
  }

  function clientCell(room, row) {
    const who = row.identity;
    const buttons = el("div", { class: "client" });
    if (row.livekit) {
      buttons.append(actionButton("Disconnect", `Disconnect ${who}`, `disconnect|${room}|${who}`, "disconnect", room, who));
      for (const [source, label] of SOURCES_TO_PUBLISH) {
        buttons.append(
          actionButton(label, `${label} as ${who}`, `publish|${room}|${who}|${source}`, "publish", room, who, { source }),
        );
      }
      buttons.append(
        actionButton(
          "Try to unmute microphone",
          `Try to unmute the microphone of ${who}`,
          `unmute_microphone|${room}|${who}`,
          "unmute_microphone",
          room,
          who,
        ),
      );
    } else {
      buttons.append(actionButton("Connect", `Connect ${who} to LiveKit`, `connect|${room}|${who}`, "connect", room, who));
    }
    return el(
      "td",
      { class: "client-cell", data: { label: "Client" } },
      buttons,
      row.outcome ? el("span", { class: "outcome" }, row.outcome) : null,
    );
  }

  function participantRow(room, row) {
    return el(
      "tr",
      { class: row.popout_of ? "popout" : "", data: { identity: row.identity, connected: String(Boolean(row.livekit)) } },
      rosterCell(room, row),
      livekitCell(room, row),
      clientCell(room, row),
    );
  }

  function roomArticle(room, index) {
    const titleId = `room-title-${index}`;
    const headers = ["Service: roster", "Emulated LiveKit: connection, tracks, permission", "Simulated client"];
    return el(
      "article",
      { class: "room", data: { room: room.name }, aria: { labelledby: titleId } },
      el("h3", { id: titleId }, "Room ", el("code", {}, room.name)),
      el(
        "ul",
        { class: "room-facts" },
        el("li", { class: "restrictions" }, el("strong", {}, "Microphone restrictions: "), restrictionText(room.state)),
        el("li", {}, el("strong", {}, "Screen share: "), screenShareText(room.state)),
        el("li", {}, el("strong", {}, "LiveKit: "), room.livekit ? `room ${room.livekit.sid}` : "no room"),
        room.state_error ? el("li", { class: "error" }, room.state_error) : null,
        el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: "small",
              data: { key: `forget|${room.name}` },
              aria: { label: `LiveKit restarts and loses room ${room.name}` },
              onclick: () => livekitAction("forget", { room: room.name }),
            },
            "LiveKit restarts (forgets the room)",
          ),
        ),
      ),
      repairList(room),
      room.participants.length
        ? el(
            "div",
            { class: "table-wrap" },
            el(
              "table",
              {},
              el("caption", { class: "visually-hidden" }, `Participants of ${room.name}`),
              el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
              el("tbody", {}, room.participants.map((row) => participantRow(room.name, row))),
            ),
          )
        : el("p", { class: "empty" }, "Nobody in the roster or in LiveKit."),
    );
  }

  function setRooms(data) {
    state.rooms = data.rooms || [];
    state.webhooks = data.webhooks !== false;
    $("webhooks").checked = state.webhooks;
    const error = $("livekit-error");
    error.hidden = !data.livekit_error;
    error.textContent = data.livekit_error || "";
    const container = $("rooms");
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
    if (!state.rooms.length) {
      container.replaceChildren(el("p", { class: "empty" }, "No rooms yet: send a ", el("code", {}, "join"), " below."));
    } else {
      container.replaceChildren(...state.rooms.map(roomArticle));
    }
    // Re-rendering replaces the buttons; keep keyboard focus where it was.
    if (focused) {
      const again = [...container.querySelectorAll("[data-key]")].find((node) => node.dataset.key === focused);
      if (again) again.focus();
    }
    refreshNames();
  }

  async function clientAction(action, room, participant, extra) {
    const status = $("client-status");
    setStatus(status, `${participant}: ${action.replace(/_/g, " ")}…`);
    try {
      const result = await post(`/console/clients/${action}`, { room, participant, ...(extra || {}) });
      setStatus(status, `${participant}: ${result.outcome}`, result.ok ? "ok" : "bad");
    } catch (error) {
      setStatus(status, `${participant}: ${error.message}`, "bad");
    }
  }

  // -- names for the form and the filter ---------------------------------------------------------

  let knownNames = "";

  function refreshNames() {
    const rooms = new Set(state.rooms.map((r) => r.name));
    for (const event of state.events.values()) if (event.room) rooms.add(event.room);
    const participants = new Set();
    for (const room of state.rooms) for (const row of room.participants) if (row.roster) participants.add(row.identity);
    // Rebuilt only when a name came or went: rebuilding would close a list the user has open.
    const names = JSON.stringify([[...rooms], [...participants]]);
    if (names === knownNames) return;
    knownNames = names;
    $("room-names").replaceChildren(...[...rooms].map((name) => el("option", { value: name })));
    $("participant-names").replaceChildren(...[...participants].map((name) => el("option", { value: name })));
    const filter = $("event-room");
    const chosen = filter.value;
    filter.replaceChildren(
      el("option", { value: "" }, "all rooms"),
      ...[...rooms].map((name) => el("option", { value: name, selected: name === chosen }, name)),
    );
    filter.value = rooms.has(chosen) ? chosen : "";
  }

  // -- the command form --------------------------------------------------------------------------

  function envelopeFromFields() {
    const action = $("cmd-action").value;
    const payload = { action };
    const target = TARGETS[action];
    if (target) {
      payload[target[0]] = $("cmd-targets")
        .value.split(/[\s,]+/)
        .filter(Boolean);
    }
    return {
      room: $("cmd-room").value.trim(),
      participant: $("cmd-participant").value.trim(),
      role: $("cmd-role").value,
      kind: $("cmd-kind").value,
      payload,
    };
  }

  function showRoutingKey(room) {
    $("cmd-routing-key").textContent = `room.${room || "…"}`;
  }

  function regenerateJson() {
    const target = TARGETS[$("cmd-action").value];
    $("cmd-targets-field").hidden = !target;
    if (target) $("cmd-targets-label").textContent = target[1];
    const envelope = envelopeFromFields();
    $("cmd-json").value = JSON.stringify(envelope, null, 2);
    showRoutingKey(envelope.room);
  }

  function useAsSender(room, participant, roster) {
    $("cmd-room").value = room;
    $("cmd-participant").value = participant;
    $("cmd-role").value = roster.role;
    $("cmd-kind").value = roster.kind;
    regenerateJson();
    $("cmd-action").focus();
  }

  async function sendCommand(event) {
    event.preventDefault();
    const status = $("command-status");
    let envelope;
    try {
      envelope = JSON.parse($("cmd-json").value);
    } catch (error) {
      setStatus(status, `The JSON does not parse: ${error.message}`, "bad");
      return;
    }
    try {
      const command = await post("/console/commands", envelope);
      upsertCommand(command);
      setStatus(status, `Published ${shortId(command.message_id)} to ${command.routing_key}`, "ok");
    } catch (error) {
      setStatus(status, error.message, "bad");
    }
  }

  // -- sent commands -----------------------------------------------------------------------------

  function commandItem(command) {
    const body = command.body || {};
    const payload = body.payload || {};
    const answers = el("ul", { class: "answers", aria: { label: "Answers" } });
    for (const answer of command.answers) {
      answers.append(
        el(
          "li",
          { data: { message: answer.message, recipient: answer.recipient } },
          "→ ",
          el("strong", {}, answer.recipient || answer.routing_key),
          ": ",
          el("span", { class: `message ${answer.message === "error" ? "error" : ""}` }, answer.message),
          answer.message === "error" && answer.body.payload ? ` (${answer.body.payload.error})` : null,
          el("details", {}, el("summary", {}, "JSON"), el("pre", {}, pretty(answer.body))),
        ),
      );
    }
    if (command.answer_count > command.answers.length) {
      answers.append(el("li", { class: "no" }, `… and ${command.answer_count - command.answers.length} more`));
    }
    if (!command.answer_count) answers.append(el("li", { class: "no" }, "no answer (yet)"));
    return el(
      "li",
      { data: { messageId: command.message_id, action: payload.action || "", participant: body.participant || "" } },
      el(
        "div",
        { class: "line" },
        el("time", {}, clock(command.at)),
        el("span", { class: "message" }, payload.action || "?"),
        el("span", {}, "as ", el("strong", {}, body.participant || "?"), ` (${body.role || "?"}, ${body.kind || "user"})`),
        el("code", {}, command.routing_key),
        el("span", { class: "corr" }, `message_id ${shortId(command.message_id)}`),
      ),
      el("pre", { class: "published", aria: { label: "JSON published" } }, JSON.stringify(body)),
      answers,
      waterfall(command),
    );
  }

  // -- a sent command's trace: its spans as bars on one time axis ---------------------------------

  const milliseconds = (value) => (value >= 100 ? `${value.toFixed(0)} ms` : `${value.toFixed(2)} ms`);

  function waterfall(command) {
    const spans = command.trace || [];
    if (!spans.length) return null;
    const total = Math.max(...spans.map((span) => span.start_ms + span.duration_ms), 0.001);
    const rows = spans.map((span) => {
      const fill = el("span", { class: "fill" });
      fill.style.left = `${(100 * span.start_ms) / total}%`;
      fill.style.width = `${Math.max((100 * span.duration_ms) / total, 0.4)}%`;
      const name = el("span", { class: "span-name" }, span.name);
      name.style.paddingLeft = `${span.depth * 0.9}rem`;
      return el(
        "li",
        {
          class: span.error ? "failed" : null,
          data: { kind: span.kind, depth: String(span.depth) },
          title: span.error || null,
        },
        name,
        el("span", { class: "bar", aria: { hidden: "true" } }, fill),
        el("span", { class: "duration" }, milliseconds(span.duration_ms), span.error ? ` · ${span.error}` : null),
      );
    });
    return el(
      "figure",
      { class: "waterfall", data: { traceId: command.trace_id || "" } },
      el("figcaption", {}, `trace ${shortId(command.trace_id)}: ${spans.length} spans, ${milliseconds(total)}`),
      el("ol", { aria: { label: "Spans of its trace" } }, rows),
    );
  }

  function upsertCommand(command) {
    // The POST's response can arrive after the stream already brought the answers (or spans): keep
    // the newer.
    const known = state.commands.get(command.message_id);
    const spans = (c) => (c.trace || []).length;
    if (known && (known.answer_count > command.answer_count || spans(known) > spans(command))) return;
    state.commands.set(command.message_id, command);
    const list = $("commands");
    const item = commandItem(command);
    const existing = [...list.children].find((li) => li.dataset.messageId === command.message_id);
    if (existing) existing.replaceWith(item);
    else list.prepend(item);
  }

  function renderCommands() {
    const sorted = [...state.commands.values()].sort((a, b) => b.at - a.at);
    $("commands").replaceChildren(...sorted.map(commandItem));
  }

  // -- events ------------------------------------------------------------------------------------

  function eventItem(event) {
    const body = event.body || {};
    return el(
      "li",
      { data: { seq: String(event.seq), room: event.room, message: event.message, recipient: event.recipient } },
      el(
        "div",
        { class: "line" },
        el("time", {}, clock(event.at)),
        el("span", { class: `message ${event.message === "error" ? "error" : ""}` }, event.message),
        el("span", {}, "→ ", el("strong", {}, event.recipient || "?")),
        $("event-room").value ? null : el("span", { class: "corr" }, `room ${event.room}`),
        event.correlation_id ? el("span", { class: "corr" }, `answers ${shortId(event.correlation_id)}`) : null,
      ),
      el("details", {}, el("summary", {}, "JSON"), el("pre", {}, pretty(body))),
    );
  }

  const shown = (event) => !$("event-room").value || event.room === $("event-room").value;

  function addEvent(event) {
    if (state.events.has(event.seq)) return;
    state.events.set(event.seq, event);
    while (state.events.size > MAX_EVENTS) state.events.delete(state.events.keys().next().value);
    if (event.room) refreshNames();
    if (!shown(event)) return;
    const list = $("events");
    list.prepend(eventItem(event));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function renderEvents() {
    const events = [...state.events.values()].filter(shown).reverse();
    $("events").replaceChildren(...events.map(eventItem));
  }

  // -- the stream --------------------------------------------------------------------------------

  function setConnection(kind, text) {
    const node = $("connection");
    node.textContent = text;
    node.className = `connection ${kind}`;
  }

  function listen() {
    const source = new EventSource("/console/stream");
    source.addEventListener("error", () => setConnection("down", "disconnected from the service, retrying…"));
    source.addEventListener("reset", (message) => {
      const data = JSON.parse(message.data);
      state.events.clear();
      for (const event of data.events) state.events.set(event.seq, event);
      state.commands.clear();
      for (const command of data.commands) state.commands.set(command.message_id, command);
      setRooms(data);
      renderEvents();
      renderCommands();
      setConnection(
        data.amqp_connected ? "live" : "down",
        data.amqp_connected ? "live" : "live, waiting for RabbitMQ (events and commands start once it answers)",
      );
    });
    source.addEventListener("event", (message) => addEvent(JSON.parse(message.data)));
    source.addEventListener("command", (message) => upsertCommand(JSON.parse(message.data)));
    source.addEventListener("rooms", (message) => setRooms(JSON.parse(message.data)));
  }

  function start() {
    const form = $("command-form");
    $("cmd-room").value = `demo-${Math.random().toString(16).slice(2, 8)}`;
    $("cmd-participant").value = "moderator-1";
    $("cmd-role").value = "moderator";
    for (const field of form.querySelectorAll("input, select")) {
      field.addEventListener("input", regenerateJson);
      field.addEventListener("change", regenerateJson);
    }
    $("cmd-json").addEventListener("input", () => {
      try {
        showRoutingKey(JSON.parse($("cmd-json").value).room);
      } catch (_) {
        showRoutingKey("");
      }
    });
    form.addEventListener("submit", sendCommand);
    $("webhooks").addEventListener("change", (event) => livekitAction("webhooks", { enabled: event.target.checked }));
    $("event-room").addEventListener("change", renderEvents);
    regenerateJson();
    listen();
  }

  start();
})();

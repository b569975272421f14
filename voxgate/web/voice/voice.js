// The voice page: get a key, call, show the transcript, the ICE state and,
// after hang-up, the session's record and verdict.
import { Call } from "./call.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ui = {
  key: $("key"), connect: $("connect"), hangup: $("hangup"), status: $("status"),
  ice: $("ice-state"), transcript: $("transcript"), audio: $("reply"),
  record: $("record"), verdict: $("verdict"), measurements: $("measurements"),
};

// Test and debugging hook: window.voxgate.{call, state, events, record}.
const hook = { call: null, state: "new", events: [], record: null, error: null };
window.voxgate = hook;

const lines = new Map(); // item or response id → <li>

function say(role, id, text, append = false) {
  let li = lines.get(id);
  if (!li) {
    li = document.createElement("li");
    li.className = role;
    lines.set(id, li);
    ui.transcript.append(li);
  }
  li.textContent = append ? li.textContent + text : text;
  li.scrollIntoView({ block: "nearest" });
}

// What you said is shown only when the session transcribes it (OpenAI's
// default is no input transcription).
const TRANSCRIBE = {
  type: "session.update",
  session: { type: "realtime", audio: { input: { transcription: { model: "whisper-1" } } } },
};

function onEvent(event) {
  hook.events.push(event.type);
  switch (event.type) {
    case "session.created":
      hook.call?.send(TRANSCRIBE);
      break;
    case "conversation.item.input_audio_transcription.completed":
      say("user", event.item_id, event.transcript);
      break;
    case "response.output_audio_transcript.delta":
      say("assistant", event.item_id || event.response_id, event.delta, true);
      break;
    case "response.output_audio_transcript.done":
      say("assistant", event.item_id || event.response_id, event.transcript);
      break;
    case "error":
      ui.status.textContent = `Error: ${event.error?.message}`;
      break;
  }
}

function onState(state) {
  hook.state = state;
  ui.ice.textContent = state;
}

async function mintDemoKey() {
  const resp = await fetch("/voice/demo-key", { method: "POST" });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error?.message || `HTTP ${resp.status}`);
  return body;
}

async function iceServersFor(key) {
  const resp = await fetch("/v1/realtime/ice_servers", { headers: { Authorization: `Bearer ${key}` } });
  return resp.ok ? (await resp.json()).ice_servers : [];
}

async function connect() {
  ui.connect.disabled = true;
  ui.record.hidden = true;
  ui.status.textContent = "Connecting…";
  try {
    let key = ui.key.value.trim();
    let iceServers;
    if (key) {
      iceServers = await iceServersFor(key);
    } else {
      const minted = await mintDemoKey();
      key = minted.value;
      iceServers = minted.ice_servers || [];
    }
    const call = new Call({
      key, iceServers, loopback: params.get("loopback") === "1", audio: ui.audio,
      onEvent, onState, onEnd: () => ended(call),
    });
    hook.call = call;
    await call.start();
    ui.hangup.disabled = false;
    ui.status.textContent = "Connected: speak.";
  } catch (err) {
    hook.error = String(err.message || err);
    ui.status.textContent = `Could not connect: ${hook.error}`;
    ui.connect.disabled = false;
  }
}

async function ended(call) {
  ui.hangup.disabled = true;
  ui.connect.disabled = false;
  if (!call.callId) return;
  ui.status.textContent = "Call ended.";
  try {
    showRecord(await call.record());
  } catch (err) {
    ui.status.textContent = `Call ended; no record: ${err.message}`;
  }
}

function showRecord(rec) {
  hook.record = rec;
  const m = rec;
  ui.verdict.textContent = `${rec.billable ? "Billable" : `Not billable (${rec.reason})`}: ${rec.rule}`;
  ui.verdict.className = rec.billable ? "billable" : "not-billable";
  const ms = (v) => (v == null ? "–" : `${Math.round(v)} ms`);
  const rows = [
    ["Session", rec.id], ["Connect", ms(m.connect_ms)], ["ICE connected", ms(m.ice_connected_ms)],
    ["Candidate pair", m.ice_pair_type || "–"], ["Audio in", `${((m.audio_in_ms || 0) / 1000).toFixed(1)} s`],
    ["Audio out", `${((m.audio_out_ms || 0) / 1000).toFixed(1)} s`], ["Ended by", m.closed_by || "–"],
  ];
  ui.measurements.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
  ui.record.hidden = false;
}

ui.connect.addEventListener("click", connect);
ui.hangup.addEventListener("click", () => hook.call?.hangup());

// A voice agent on voxgate through the official OpenAI Agents SDK (realtime),
// the way the SDK's WebRTC transport guide does it. Plain script, run after
// tests/js/dist/agents-realtime.js (which sets window.AgentsRealtime).
//
// Inputs, set on window before this script runs:
//   BASE          e.g. "http://127.0.0.1:8080/v1"; the SDK POSTs the SDP offer
//                 to CALLS_URL, default BASE + "/realtime/calls"
//   EK            ephemeral client key ("ek_..."; the SDK refuses any other
//                 key in a browser)
//   CALLS_URL     optional, the full URL to POST the offer to
//   INSTRUCTIONS  optional, the agent's instructions
//   MODEL         optional, RealtimeSession `model` (else the SDK's default)
//   SESSION_OPTIONS optional, more RealtimeSession options (e.g. {tracingDisabled: true})
//   MIC           optional: "tone" = a 440 Hz WebAudio tone as the microphone;
//                 default: the SDK's own getUserMedia({audio: true}) (in headless
//                 Chromium: --use-fake-ui-for-media-stream
//                 --use-fake-device-for-media-stream [--use-file-for-fake-audio-capture=x.wav])
//   AUTOCONNECT   optional, false = wait for window.agents.connect()
// Output, on window.agents:
//   state         "idle" | "connecting" | "connected" | "failed" | "closed"
//   connected     true once session.connect() resolved
//   error         null, or the message of what connect() rejected with / the session's error
//   errors        every 'error' event of the session, as strings
//   events        every server event received on the data channel
//                 (RealtimeSession 'transport_event'), as parsed JSON
//   eventTypes    their `type`s, in order
//   callId        the call id the SDK took from the response's Location header
//   connectMs     how long session.connect() took
//   audioPlaying  true once the <audio id="agent-audio"> plays the remote track
//   session, transport, audio  the SDK objects and the audio element
//   packetsReceived()  Promise<number>: inbound-rtp audio packets (getStats)
//   sendMessage(text), close()
(function () {
  'use strict';
  const { RealtimeAgent, RealtimeSession, OpenAIRealtimeWebRTC } = window.AgentsRealtime;

  const state = {
    state: 'idle', connected: false, error: null, errors: [], events: [], eventTypes: [],
    callId: null, connectMs: null, audioPlaying: false,
  };
  window.agents = state;

  const describe = (e) => {
    if (e == null) return String(e);
    if (e instanceof Error) return `${e.name}: ${e.message}`;
    // session 'error' events are {type: 'error', error: <server event or Error>}
    const inner = e.error !== undefined ? e.error : e;
    if (inner instanceof Error) return `${inner.name}: ${inner.message}`;
    try { return JSON.stringify(inner); } catch (_) { return String(inner); }
  };

  // The documented audioElement option: our own element, in the page, so a
  // test can see it play (the SDK sets autoplay and srcObject on ontrack).
  const audio = document.createElement('audio');
  audio.id = 'agent-audio';
  audio.autoplay = true;
  document.body.appendChild(audio);
  audio.addEventListener('playing', () => { state.audioPlaying = true; });
  state.audio = audio;

  function toneStream() {
    const ctx = new AudioContext({ sampleRate: 48000 });
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    gain.gain.value = 0.1;
    const dest = ctx.createMediaStreamDestination();
    osc.frequency.value = 440;
    osc.connect(gain).connect(dest);
    osc.start();
    ctx.resume();
    return dest.stream;
  }

  const transport = new OpenAIRealtimeWebRTC({
    baseUrl: window.CALLS_URL || `${String(window.BASE).replace(/\/+$/, '')}/realtime/calls`,
    audioElement: audio,
    ...(window.MIC === 'tone' ? { mediaStream: toneStream() } : {}),
  });
  const agent = new RealtimeAgent({
    name: 'Assistant',
    instructions: window.INSTRUCTIONS || 'You are a helpful assistant. Answer briefly.',
  });
  const session = new RealtimeSession(agent, {
    transport,
    ...(window.MODEL ? { model: window.MODEL } : {}),
    ...(window.SESSION_OPTIONS || {}),
  });
  state.session = session;
  state.transport = transport;

  session.on('transport_event', (event) => {
    state.events.push(event);
    state.eventTypes.push(event && event.type);
  });
  session.on('error', (e) => {
    const text = describe(e);
    state.errors.push(text);
    if (state.error === null) state.error = text;
  });
  transport.on('connection_change', (status) => {
    if (status === 'disconnected' && state.state !== 'failed') state.state = 'closed';
  });

  state.packetsReceived = async () => {
    const pc = transport.connectionState.peerConnection;
    if (!pc) return 0;
    let n = 0;
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && (r.kind || r.mediaType) === 'audio') n += r.packetsReceived || 0;
    });
    return n;
  };
  state.sendMessage = (text) => session.sendMessage(text);
  state.close = () => session.close();

  state.connect = async () => {
    state.state = 'connecting';
    const started = performance.now();
    try {
      await session.connect({ apiKey: window.EK });
      state.connectMs = Math.round(performance.now() - started);
      state.callId = transport.callId || null;
      state.connected = true;
      state.state = 'connected';
    } catch (e) {
      state.error = describe(e);
      state.state = 'failed';
    }
    return state.connected;
  };

  if (window.AUTOCONNECT !== false) state.connect();
})();

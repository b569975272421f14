// A WebRTC call to voxgate, as to OpenAI's Realtime WebRTC interface:
// POST the SDP offer to /v1/realtime/calls with an ephemeral key, JSON events
// on the "oai-events" data channel, the reply as a remote audio track.

const GATHER_TIMEOUT_MS = 3000;

/** Wait until ICE gathering completes (voxgate does not take trickled
 *  candidates), or GATHER_TIMEOUT_MS, whichever comes first. */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** Keep only loopback candidates (tests on one machine). */
export function loopbackOnly(sdp) {
  return sdp.split("\r\n").filter((line) => {
    if (!line.startsWith("a=candidate:")) return true;
    const address = line.split(" ")[4];
    return address === "127.0.0.1" || address === "::1";
  }).join("\r\n");
}

export class Call {
  /**
   * @param {object} opts
   * @param {string} opts.key ephemeral key (ek_…)
   * @param {RTCIceServer[]} [opts.iceServers]
   * @param {boolean} [opts.loopback] offer loopback candidates only
   * @param {HTMLAudioElement} opts.audio where the reply plays
   * @param {(event: object) => void} opts.onEvent server events
   * @param {(state: string) => void} opts.onState iceConnectionState
   * @param {() => void} opts.onEnd the call ended (either side)
   */
  constructor(opts) {
    this.opts = opts;
    this.callId = null;
    this.ended = false;
  }

  async start() {
    const { key, iceServers = [], loopback, audio, onEvent, onState } = this.opts;
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    pc.addEventListener("iceconnectionstatechange", () => {
      onState(pc.iceConnectionState);
      if (pc.iceConnectionState === "failed" || pc.iceConnectionState === "closed") this.end();
    });
    pc.addEventListener("track", (e) => { audio.srcObject = e.streams[0] || new MediaStream([e.track]); });

    this.mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    for (const track of this.mic.getAudioTracks()) pc.addTrack(track, this.mic);

    const dc = pc.createDataChannel("oai-events");
    this.dc = dc;
    dc.addEventListener("message", (e) => onEvent(JSON.parse(e.data)));
    dc.addEventListener("close", () => this.end());

    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    let sdp = pc.localDescription.sdp;
    if (loopback) sdp = loopbackOnly(sdp);

    const resp = await fetch("/v1/realtime/calls", {
      method: "POST",
      body: sdp,
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/sdp" },
    });
    if (resp.status !== 201) {
      const body = await resp.json().catch(() => ({}));
      this.end();
      throw new Error(body.error?.message || `HTTP ${resp.status}`);
    }
    this.callId = resp.headers.get("Location").split("/").pop();
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  }

  /** Send a client event on the data channel. */
  send(event) {
    if (this.dc?.readyState === "open") this.dc.send(JSON.stringify(event));
  }

  /** Hang up (POST …/hangup), then close locally. */
  async hangup() {
    if (this.callId && !this.ended) {
      await fetch(`/v1/realtime/calls/${this.callId}/hangup`, {
        method: "POST", headers: { Authorization: `Bearer ${this.opts.key}` },
      }).catch(() => {});
    }
    this.end();
  }

  end() {
    if (this.ended) return;
    this.ended = true;
    this.mic?.getTracks().forEach((t) => t.stop());
    this.pc?.close();
    this.opts.onState("closed");
    this.opts.onEnd?.();
  }

  /** The session record of the call, once completed (polls up to ~5 s). */
  async record() {
    for (let i = 0; i < 50; i++) {
      const resp = await fetch(`/v1/realtime/calls/${this.callId}`, {
        headers: { Authorization: `Bearer ${this.opts.key}` },
      });
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error?.message || `HTTP ${resp.status}`);
      if (body.status === "completed") return body;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("the session is still active");
  }

  /** RTP packets received on the reply track (getStats inbound-rtp). */
  async packetsReceived() {
    if (!this.pc || this.pc.connectionState === "closed") return this.lastPackets || 0;
    let n = 0;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") n += s.packetsReceived;
    });
    this.lastPackets = n;
    return n;
  }
}

// What the test reads from a call page (window.call.pc, window.events):
// the audio packets received so far and the types of the events.
window.packetsReceived = async () => {
  let n = 0;
  (await window.call.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") n += r.packetsReceived;
  });
  return n;
};
window.types = () => window.events.map((e) => e.type);

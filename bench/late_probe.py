"""``voxgate`` (its CLI, same arguments) with the bridge's own late frames
counted, for the WebRTC benchmark: ``python -m bench.late_probe serve …``.

Every frame of voxgate's outgoing tracks falls due on the shared 20 ms grid
and is sent by the process's RTP pump (``voxgate.proxy.webrtc.rtp_pump``); a frame
sent more than ``rtp_pump.LATE_S`` (60 ms) after its tick (the pump's
``late_frames``), or skipped (a track re-bases after lagging more than
``media.MAX_LAG_S``: its ``frames_skipped``), is a bridge late frame. The
running count is written, as a decimal number, to the file named by the
``VOXGATE_BENCH_LATE_FILE`` environment variable each time it grows. The
wrapper only observes: the stream's own ``send_due`` runs unchanged."""

from __future__ import annotations

import os
import sys

from voxgate.proxy.webrtc import rtp_pump

_FILE = os.environ.get("VOXGATE_BENCH_LATE_FILE")
_late = 0


def _count(n: int) -> None:
    global _late
    _late += n
    if _FILE:
        with open(_FILE, "w") as fh:
            fh.write(str(_late))


def _observe(send_due):
    def observed(self, tick, now, ntp, pump):
        late0 = pump.late_frames
        skipped0 = getattr(self.source, "frames_skipped", 0)
        send_due(self, tick, now, ntp, pump)
        late = pump.late_frames - late0 + getattr(self.source, "frames_skipped", 0) - skipped0
        if late:
            _count(late)
    return observed


rtp_pump.RtpStream.send_due = _observe(rtp_pump.RtpStream.send_due)  # type: ignore[method-assign]

if __name__ == "__main__":
    from voxgate.cli import main

    sys.exit(main(sys.argv[1:]))

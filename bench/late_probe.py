"""``voxgate`` (its CLI, same arguments) with the bridge's own late frames
counted, for the WebRTC benchmark: ``python -m bench.late_probe serve …``.

Every frame of voxgate's outgoing tracks (``voxgate.proxy.media.OutputAudioTrack``)
falls due on the shared 20 ms grid; a frame handed to aiortc's sender more
than :data:`LATE_S` after its tick, or skipped (the track re-bases after
lagging more than ``media.MAX_LAG_S``), is a bridge late frame. The running
count is written, as a decimal number, to the file named by the
``VOXGATE_BENCH_LATE_FILE`` environment variable each time it grows. The
wrapper only observes: the track's own ``recv`` runs unchanged."""

from __future__ import annotations

import os
import sys

from voxgate.proxy import media

LATE_S = 0.060
_FILE = os.environ.get("VOXGATE_BENCH_LATE_FILE")
_late = 0


def _count(n: int) -> None:
    global _late
    _late += n
    if _FILE:
        with open(_FILE, "w") as fh:
            fh.write(str(_late))


def _observe(recv):
    async def timed(self):
        tick0 = self._tick0
        packet = await recv(self)
        due = self._tick0 + self._index - 1
        if tick0 is not None and self._tick0 != tick0:
            _count(self._tick0 - tick0)  # frames skipped by the re-base
        elif self._clock() - due * media.FRAME_S > LATE_S:
            _count(1)
        return packet
    return timed


media.OutputAudioTrack.recv = _observe(media.OutputAudioTrack.recv)  # type: ignore[method-assign]

if __name__ == "__main__":
    from voxgate.cli import main

    sys.exit(main(sys.argv[1:]))

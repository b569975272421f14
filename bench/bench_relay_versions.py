"""The WebSocket relay's cost, this checkout against another revision, side
by side on one workload (``bench.bench_ws_relay._measure``: 100 sessions of
10 s and of 2 s, 24 kHz PCM16 both ways, echo upstream), rounds interleaved,
with a bare aiohttp relay as the floor.

``python -m bench.bench_relay_versions BASELINE_DIR [ROUNDS]`` where
BASELINE_DIR is a checkout of the other revision (``git worktree add
/tmp/base <rev>``). Prints one JSON object per measurement.
"""

from __future__ import annotations

import json
import os
import sys

from bench.bench_ws_relay import _measure
from bench.common import PY, Proc, Voxgate, echo_provider, free_port


def run(baseline: str, rounds: int = 3) -> list[dict]:
    rows = []
    env = {"VOXGATE_BASELINE_TREE": os.path.abspath(baseline)}
    with echo_provider() as echo:
        upstream = f"ws://127.0.0.1:{echo.port}/v1/realtime"
        for r in range(rounds):
            for name, module in (("voxgate (this checkout)", "voxgate"),
                                 ("voxgate (baseline)", "bench.baseline_voxgate")):
                vg = Voxgate(upstream, module=module, env=env)
                try:
                    rows.append({**_measure(name, vg, vg.url, vg.key, False, 100, 10.0), "round": r})
                finally:
                    vg.stop()
                print(json.dumps(rows[-1]), flush=True)
            port = free_port()
            with Proc([PY, "-m", "bench.relays", "aiohttp", "--port", str(port),
                       "--upstream", upstream], port) as relay:
                rows.append({**_measure("bare aiohttp relay + uvloop", relay,
                                        f"ws://127.0.0.1:{port}/v1/realtime", "bench", True, 100,
                                        10.0), "round": r})
            print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)

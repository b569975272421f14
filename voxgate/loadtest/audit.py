"""The metering audit: voxgate's recorded verdict of every session against
the ground truth of its plan.

Records come from ``GET /v1/sessions?since=…`` (100 a page, so a run costs a
few requests against the key's rate limit), then ``GET /v1/sessions/{id}``
for any still missing, polling until each is ``completed`` or the wait ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from voxgate.loadtest.plan import ground_truth
from voxgate.loadtest.result import ADMITTED, SessionResult

__all__ = ["fetch_records", "find_calls", "wait_completed", "audit", "AUDIO_TOLERANCE_MS"]


async def fetch_records(http: aiohttp.ClientSession, base_url: str, key: str,
                        session_ids: set[str], since: float, wait_s: float = 20.0,
                        ) -> dict[str, dict[str, Any]]:
    """voxgate's completed records of ``session_ids`` (those it could get)."""
    headers = {"Authorization": f"Bearer {key}"}
    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + wait_s
    base = base_url.rstrip("/")
    while True:
        missing = {s for s in session_ids if records.get(s, {}).get("status") != "completed"}
        if not missing:
            return records
        after = None
        while True:
            params = {"limit": "100", "since": f"{since:.3f}"}
            if after:
                params["after"] = after
            async with http.get(f"{base}/v1/sessions", params=params, headers=headers) as resp:
                if resp.status != 200:
                    break
                page = await resp.json()
            for row in page.get("data", []):
                if row.get("id") in session_ids:
                    records[row["id"]] = row
            if not page.get("has_more") or not page.get("last_id"):
                break
            after = page["last_id"]
        missing = {s for s in session_ids if records.get(s, {}).get("status") != "completed"}
        if not missing:
            return records
        if time.monotonic() > deadline:
            for sid in missing:  # one last look, one by one
                async with http.get(f"{base}/v1/sessions/{sid}", headers=headers) as resp:
                    if resp.status == 200:
                        records[sid] = await resp.json()
            return records
        await asyncio.sleep(0.5)


async def find_calls(http: aiohttp.ClientSession, base_url: str, key: str, call_sids: set[str],
                     since: float) -> dict[str, str]:
    """``{CallSid: session id}`` of the phone calls voxgate has a session
    for (``call_sid`` of ``GET /v1/sessions?since=…``, 100 a page): a call's
    session id is not sent to Twilio, so the audit finds it by the call."""
    headers = {"Authorization": f"Bearer {key}"}
    found: dict[str, str] = {}
    after = None
    while len(found) < len(call_sids):
        params = {"limit": "100", "since": f"{since:.3f}"}
        if after:
            params["after"] = after
        async with http.get(f"{base_url.rstrip('/')}/v1/sessions", params=params,
                            headers=headers) as resp:
            if resp.status != 200:
                break
            page = await resp.json()
        for row in page.get("data", []):
            if row.get("call_sid") in call_sids:
                found[row["call_sid"]] = row["id"]
        if not page.get("has_more") or not page.get("last_id"):
            break
        after = page["last_id"]
    return found


async def wait_completed(http: aiohttp.ClientSession, base_url: str, key: str, session_id: str,
                         wait_s: float) -> bool:
    """Poll ``GET /v1/sessions/{id}`` (50 ms, doubling up to 0.5 s) until
    voxgate has completed the session, which frees its concurrency slot;
    False when ``wait_s`` seconds pass first."""
    url = f"{base_url.rstrip('/')}/v1/sessions/{session_id}"
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + wait_s
    pause = 0.05
    while True:
        async with http.get(url, headers=headers) as resp:
            if resp.status == 200 and (await resp.json()).get("status") == "completed":
                return True
        if time.monotonic() + pause > deadline:
            return False
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.5)


AUDIO_TOLERANCE_MS = 20.0
"""How far voxgate's audio figures may be from the client's own counts, in
ms (one 20 ms chunk; records keep whole ms)."""


def audit(results: list[SessionResult], records: dict[str, dict[str, Any]],
          min_audio_ms: float = 5000.0, min_text_responses: int = 1,
          max_connect_ms: float = 2000.0) -> dict[str, Any]:
    """Compare every admitted session's recorded reason with its ground
    truth (:func:`voxgate.loadtest.plan.ground_truth` of the client's own
    counts) and its recorded audio in and out with what the client sent and
    received (within :data:`AUDIO_TOLERANCE_MS`; over WebRTC the audio out
    with the audio sent, whose echo the client cannot count exactly); a
    ``provider_eof`` session must also be recorded as a provider drop (close
    code 1006, closed by ``upstream``). Fills ``expected``/``recorded`` on
    the results.

    Connect latency: voxgate measures it from the upgrade done, the client
    from before its upgrade request, so the client's figure bounds
    voxgate's from above. A session the client saw connect in more than
    ``max_connect_ms`` may rightly be recorded ``connect_timeout`` on a
    loaded machine (where its ground truth, ``provider_error`` aside, would
    otherwise apply); such sessions match either way and are counted in
    ``slow_connects``.

    Returns:
        ``{"checked", "matched", "mismatched", "mismatches": [...],
        "unrecorded": N, "slow_connects": N, "by_kind": {kind: {"checked", "matched"}},
        "audio": {"checked", "within_tolerance", "mismatched",
        "max_error_in_ms", "max_error_out_ms", "tolerance_ms"}}``;
        ``unrecorded`` counts admitted sessions voxgate has no completed
        record of (they are mismatches too); a mismatch's ``what`` is
        ``verdict``, ``close`` or ``audio``.
    """
    checked = matched = unrecorded = slow_connects = 0
    mismatches: list[dict[str, Any]] = []
    by_kind: dict[str, dict[str, int]] = {}
    audio = {"checked": 0, "within_tolerance": 0, "mismatched": 0,
             "max_error_in_ms": 0.0, "max_error_out_ms": 0.0, "tolerance_ms": AUDIO_TOLERANCE_MS}
    for r in results:
        record = records.get(r.session_id or "")
        if record is not None:
            r.recorded = record.get("reason")
            r.recorded_billable = record.get("billable")
            r.recorded_rule = record.get("rule")
        if r.outcome != ADMITTED:
            continue
        # Over WebRTC the echo comes back as Opus media, whose length the
        # client cannot count exactly (silence decodes to zeros): the echo
        # of all audio sent is assumed, as over WebSocket it is checked.
        out_ms = r.audio_out_ms if r.transport != "webrtc" else r.audio_in_ms
        r.expected = ground_truth(r.kind, r.audio_in_ms, out_ms, min_audio_ms,
                                  responses_completed=r.responses_completed,
                                  min_text_responses=min_text_responses)
        checked += 1
        kind = by_kind.setdefault(r.kind, {"checked": 0, "matched": 0})
        kind["checked"] += 1
        what = "verdict"
        if record is None or record.get("status") != "completed":
            unrecorded += 1
        elif r.recorded != r.expected and not (
                r.recorded == "connect_timeout" and r.expected not in ("provider_error", "turn_failure")
                and r.connect_ms is not None and r.connect_ms > max_connect_ms):
            pass
        elif r.kind == "provider_eof" and (record.get("close_code"), record.get("closed_by")) != (1006, "upstream"):
            what = "close"
        else:
            matched += 1
            kind["matched"] += 1
            if r.recorded != r.expected:
                slow_connects += 1
            err_in = abs(float(record.get("audio_in_ms") or 0) - r.audio_in_ms)
            err_out = abs(float(record.get("audio_out_ms") or 0) - out_ms)
            audio["checked"] += 1
            audio["max_error_in_ms"] = max(audio["max_error_in_ms"], err_in)
            audio["max_error_out_ms"] = max(audio["max_error_out_ms"], err_out)
            if err_in <= AUDIO_TOLERANCE_MS and err_out <= AUDIO_TOLERANCE_MS:
                audio["within_tolerance"] += 1
                continue
            audio["mismatched"] += 1
            what = "audio"
        mismatches.append({
            "what": what,
            "index": r.index,
            "session_id": r.session_id,
            "kind": r.kind,
            "expected": r.expected,
            "recorded": r.recorded if record else None,
            "status": record.get("status") if record else None,
            "rule": r.recorded_rule,
            "client_audio_in_ms": round(r.audio_in_ms),
            "client_audio_out_ms": round(r.audio_out_ms),
            "client_responses_completed": r.responses_completed,
            "client_connect_ms": None if r.connect_ms is None else round(r.connect_ms, 1),
            "server_audio_in_ms": record.get("audio_in_ms") if record else None,
            "server_audio_out_ms": record.get("audio_out_ms") if record else None,
            "server_connect_ms": record.get("connect_ms") if record else None,
            "server_close": [record.get("close_code"), record.get("closed_by"), record.get("close_reason")]
            if record else None,
        })
    return {"checked": checked, "matched": matched, "mismatched": checked - matched,
            "unrecorded": unrecorded, "slow_connects": slow_connects, "mismatches": mismatches,
            "by_kind": by_kind, "audio": audio}

"""Bad input is a 4xx, never a 500: hypothesis fuzzes ``rtc_sdp.check_offer``
(pure) and every route of the OpenAPI document against the real app on
loopback (a server thread of its own, so hypothesis drives it from plain
synchronous tests). Bounded: derandomized, a few examples per route; the
module runs in about 30 s (``VOXGATE_FUZZ_EXAMPLES=N`` hunts longer)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import string
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TEST_CATALOG, merge_settings, start_server
from voxgate.proxy import openapi
from voxgate.proxy.webrtc.sdp import InvalidSdp, Offer, check_offer

# VOXGATE_FUZZ_EXAMPLES=200 for a longer, randomized hunt (not derandomized then)
EXAMPLES = int(os.environ.get("VOXGATE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 12, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


async def _real_offer() -> str:
    from aiortc import RTCPeerConnection

    from voxgate.proxy.webrtc import ice as rtc_ice

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("oai-events")
        with rtc_ice.host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


@pytest.fixture(scope="module")
def offer() -> str:
    """A real offer (aiortc): audio (Opus), the data channel, host candidates."""
    return asyncio.run(_real_offer())


# -- check_offer ---------------------------------------------------------------

def test_offer_without_dtls_is_invalid_sdp_not_attribute_error(offer):
    assert isinstance(check_offer(offer), Offer)
    stripped = "\r\n".join(line for line in offer.splitlines()
                           if not line.startswith(("a=fingerprint", "a=setup")))
    with pytest.raises(InvalidSdp, match="no DTLS fingerprint"):
        check_offer(stripped)
    no_ice = "\r\n".join(line for line in offer.splitlines() if not line.startswith("a=ice-"))
    with pytest.raises(InvalidSdp, match="no ICE ufrag/pwd"):
        check_offer(no_ice)


_sdp_junk = st.text(alphabet=string.printable + "é\x00", max_size=40)


@st.composite
def mutated_offers(draw: st.DrawFn, offer: str) -> str:
    lines = offer.splitlines()
    out: list[str] = []
    for line in lines:
        action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "cut", "junk", "twice"]))
        if action == "keep":
            out.append(line)
        elif action == "cut":
            out.append(line[: draw(st.integers(0, max(0, len(line) - 1)))])
        elif action == "junk":
            out.append(line.split("=", 1)[0] + "=" + draw(_sdp_junk))
        elif action == "twice":
            out += [line, line]
    if draw(st.booleans()):
        out.insert(draw(st.integers(0, len(out))), draw(_sdp_junk))
    return draw(st.sampled_from(["\r\n", "\n"])).join(out)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_check_offer_refuses_with_invalid_sdp_only(offer, data):
    text = data.draw(st.one_of(mutated_offers(offer), st.text(max_size=200),
                               st.text(max_size=200).map(lambda t: "v=0\r\n" + t)))
    try:
        result = check_offer(text)
    except InvalidSdp as err:
        assert err.status == 400 and err.param == "sdp"
    else:
        assert isinstance(result, Offer)


# -- every HTTP route ------------------------------------------------------------

class ThreadServer:
    """voxgate (full app) on loopback in a thread with its own event loop."""

    def __init__(self, settings_data: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.run(start_server(settings_data, "roomy"))
        self.port = int(self.server.url.rsplit(":", 1)[1])

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.run(self.server.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory, voice_url) -> Iterator[ThreadServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "catalog.toml").write_text(TEST_CATALOG)
    base = {"data_dir": str(tmp / "data"), "catalog": str(tmp / "catalog.toml"),
            "upstream": {"provider": "local", "url": voice_url, "connect_timeout_s": 5.0}}
    # a webhook secret, so that Stripe-Signature checking is fuzzed too
    srv = ThreadServer(merge_settings(base, {"billing": {"stripe_webhook_secret": "whsec_fuzz"}}))
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def credentials(live) -> list[str | None]:
    """Authorization values the fuzzer picks from: none, the project key, an
    ephemeral key, the admin key (when the app has them), garbage."""
    key = live.server.key
    status, _, body = live.request("POST", "/v1/realtime/client_secrets", b"{}",
                                   {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert status == 200, body
    ek = json.loads(body)["value"]
    values: list[str | None] = [None, f"Bearer {key}", f"Bearer {ek}", "Bearer vg_live_nope", "Basic Zm9vOmJhcg=="]
    admin = getattr(live.server, "admin_key", "")
    if admin:
        values.append(f"Bearer {admin}")
    return values


_latin = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ", max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
_CONTENT_TYPES = ["application/json", "application/sdp", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=xyz", "text/plain", None]


def _body_for(op: openapi.Op, offer: str) -> st.SearchStrategy[bytes | None]:
    shaped: list[st.SearchStrategy[bytes | None]] = [
        st.none(), st.binary(max_size=64), _json.map(lambda v: json.dumps(v).encode())]
    if op.request:
        schema = openapi.SCHEMAS[op.request]
        names = list(schema.get("properties", {})) or ["x"]
        shaped.append(st.dictionaries(st.sampled_from(names), _json, max_size=3)
                      .map(lambda v: json.dumps(v).encode()))
    if op.request_type == "application/sdp":
        shaped.append(mutated_offers(offer).map(str.encode))
    return st.one_of(shaped)


OPS = [op for op in openapi.ROUTES if op.path != "/v1/realtime"]  # the upgrade is fuzzed below


@pytest.mark.parametrize("op", OPS, ids=lambda op: f"{op.method} {op.path}")
@FUZZ
@given(data=st.data())
def test_no_route_answers_5xx(live, credentials, offer, op, data):
    ids = [live.server.project_id, "sess_" + "0" * 24, "rtc_nope"]
    path = op.path
    for name in openapi.re.findall(r"{(\w+)}", op.path):
        value = data.draw(st.sampled_from(ids) | st.text(min_size=1, max_size=20), label=name)
        path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
    names = [p.name for p in op.query] + ["x"]
    query = data.draw(st.dictionaries(st.sampled_from(names), _latin, max_size=3), label="query")
    if query:
        path += "?" + urllib.parse.urlencode(query)
    headers: dict[str, str] = {}
    auth = data.draw(st.sampled_from(credentials), label="auth")
    if auth:
        headers["Authorization"] = auth
    content_type = data.draw(st.sampled_from(_CONTENT_TYPES), label="content_type")
    if content_type:
        headers["Content-Type"] = content_type
    if data.draw(st.booleans(), label="project header"):
        headers["OpenAI-Project"] = data.draw(_latin, label="project")
    body = data.draw(_body_for(op, offer), label="body")
    status, got, raw = live.request(op.method, path, body, headers)
    # a 5xx only where the route documents it on purpose (503: billing without Stripe)
    assert status < 500 or (status != 500 and status in op.errors), (op.method, path, status, raw[:300])
    assert got.get("x-request-id", "").startswith("req_")
    if status >= 400 and op.response_type == "application/json":
        assert "error" in json.loads(raw), raw[:300]


@FUZZ
@given(data=st.data())
def test_realtime_upgrade_refusals_are_4xx(live, credentials, data):
    headers = {"Upgrade": data.draw(st.sampled_from(["websocket", "h2c", ""])),
               "Connection": "Upgrade", "Sec-WebSocket-Version": data.draw(st.sampled_from(["13", "8", "x"])),
               "Sec-WebSocket-Key": data.draw(st.sampled_from(["dGhlIHNhbXBsZSBub25jZQ==", "", "!!"]))}
    auth = data.draw(st.sampled_from([c for c in credentials if c is None or "nope" in c or "Basic" in c]))
    if auth:
        headers["Authorization"] = auth
    protocol = data.draw(st.sampled_from(["", "realtime", "openai-insecure-api-key.ek_nope", "realtime, x"]))
    if protocol:
        headers["Sec-WebSocket-Protocol"] = protocol
    query = urllib.parse.urlencode(data.draw(st.dictionaries(st.sampled_from(["model", "call_id", "x"]),
                                                             _latin, max_size=2)))
    status, got, raw = live.request("GET", "/v1/realtime" + ("?" + query if query else ""), None, headers)
    assert 400 <= status < 500, (status, headers, raw[:300])
    assert got.get("x-request-id", "").startswith("req_")

"""The OpenAPI document (``GET /openapi.json``): every route of the full app
is in it, it is a valid OpenAPI 3.1 / JSON Schema 2020-12 document, and
real responses of the main routes match the shapes it documents."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator

from tests.conftest import SLOW
from voxgate.proxy.openapi import OPENAPI_PATH, ROUTES, document

WHERE = ("add one line for it to ROUTES in voxgate/proxy/openapi.py (Op(...) for a JSON route, "
         "page(...)/form(...) for a dashboard page), and its response schema to SCHEMAS if it is new")


def documented_path(resource: web.AbstractResource) -> str:
    """The path as the document writes it (static directories as ``…/{filename}``)."""
    if isinstance(resource, web.StaticResource):
        return resource.canonical + "/{filename}"
    return resource.canonical


def registered(app: web.Application) -> set[tuple[str, str]]:
    ops = set()
    for route in app.router.routes():
        if route.resource is None or route.method in ("HEAD", "OPTIONS", "*"):
            continue  # HEAD comes with GET; CORS preflights are answered by the middleware
        ops.add((route.method, documented_path(route.resource)))
    return ops


def validate(doc: dict, method: str, path: str, status: int, body: object) -> None:
    """Validate ``body`` against the schema the served document gives for
    ``method path`` answering ``status``."""
    op = doc["paths"][path][method.lower()]
    assert str(status) in op["responses"], f"{method} {path} answered {status}, not documented"
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": doc["components"]},
                        cls=Draft202012Validator)


async def test_every_registered_route_is_documented(server, http):
    # the full app (every plugin), after start-up (some routes are added then)
    async with http.get(server.url + OPENAPI_PATH) as resp:
        assert resp.status == 200
        doc = await resp.json()
    missing = sorted(
        f"{method} {path}" for method, path in registered(server.app)
        if method.lower() not in doc["paths"].get(path, {})
    )
    assert not missing, f"routes missing from the OpenAPI document: {missing}; {WHERE}"
    ops = registered(server.app)
    stale = sorted(f"{op.method} {op.path}" for op in ROUTES if (op.method, op.path) not in ops)
    assert not stale, (f"documented but not served: {stale}; remove (or fix) their lines in ROUTES "
                       "in voxgate/proxy/openapi.py")


def test_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name
    refs = set(re.findall(r'"#/components/(\w+)/(\w[\w-]*)"', json.dumps(doc)))
    for kind, name in refs:
        assert name in doc["components"][kind], f"dangling $ref #/components/{kind}/{name}"
    op_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            names = re.findall(r"{(\w+)}", path)
            assert [p["name"] for p in op.get("parameters", []) if p["in"] == "path"] == names
            assert method in ("get", "put", "post", "delete", "patch")
    assert len({(op.method, op.path) for op in ROUTES}) == len(ROUTES), "a route is listed twice"


async def test_responses_match_the_documented_shapes(server, http):
    async with http.get(server.url + OPENAPI_PATH) as resp:
        doc = await resp.json()
    validate(doc, "GET", OPENAPI_PATH, 200, doc)
    auth = {"Authorization": f"Bearer {server.key}"}

    async with http.get(server.url + "/healthz") as resp:
        validate(doc, "GET", "/healthz", resp.status, await resp.json())
    async with http.post(server.url + "/v1/realtime/client_secrets", headers=auth,
                         json={"session": {"type": "realtime", "instructions": "Be brief."}}) as resp:
        secret = await resp.json()
        validate(doc, "POST", "/v1/realtime/client_secrets", resp.status, secret)
    async with http.post(server.url + "/v1/realtime/sessions", headers=auth,
                         json={"model": "gpt-realtime"}) as resp:
        validate(doc, "POST", "/v1/realtime/sessions", resp.status, await resp.json())
    ek = {"Authorization": f"Bearer {secret['value']}"}
    async with http.get(server.url + "/v1/realtime/ice_servers", headers=ek) as resp:
        validate(doc, "GET", "/v1/realtime/ice_servers", resp.status, await resp.json())

    # one real session, so the list and the record are not empty
    ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime", headers=auth)
    session_id = ws._response.headers["X-Voxgate-Session-Id"]
    assert json.loads((await ws.receive(timeout=10 * SLOW)).data)["type"] == "session.created"
    await ws.close()
    await server.session(session_id)
    async with http.get(server.url + "/v1/sessions", headers=auth) as resp:
        listed = await resp.json()
        validate(doc, "GET", "/v1/sessions", resp.status, listed)
        assert listed["data"][0]["id"] == session_id
    async with http.get(server.url + f"/v1/sessions/{session_id}", headers=auth) as resp:
        validate(doc, "GET", "/v1/sessions/{session_id}", resp.status, await resp.json())
    async with http.get(server.url + f"/v1/projects/{server.project_id}", headers=auth) as resp:
        validate(doc, "GET", "/v1/projects/{project_id}", resp.status, await resp.json())
    admin = {"Authorization": f"Bearer {server.admin_key}"}  # pins are the account owner's
    async with http.patch(server.url + f"/v1/projects/{server.project_id}", headers=admin,
                          json={"allowed_origins": ["https://app.example.com"]}) as resp:
        validate(doc, "PATCH", "/v1/projects/{project_id}", resp.status, await resp.json())
        assert resp.status == 200

    # errors have the documented Error shape
    async with http.get(server.url + "/v1/sessions/sess_nope", headers=auth) as resp:
        validate(doc, "GET", "/v1/sessions/{session_id}", resp.status, await resp.json())
    async with http.post(server.url + "/v1/realtime/client_secrets",
                         headers={"Authorization": "Bearer nope"}) as resp:
        validate(doc, "POST", "/v1/realtime/client_secrets", resp.status, await resp.json())
    async with http.post(server.url + "/v1/realtime/client_secrets", headers=auth, data=b"{not json") as resp:
        validate(doc, "POST", "/v1/realtime/client_secrets", resp.status, await resp.json())


@pytest.mark.parametrize("op", [op for op in ROUTES if op.response], ids=lambda op: f"{op.method} {op.path}")
def test_documented_schemas_exist(op):
    assert op.response in document()["components"]["schemas"]

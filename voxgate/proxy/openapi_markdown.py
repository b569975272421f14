"""The API reference (``docs/api.md``) rendered from the OpenAPI document of
``voxgate.proxy.openapi``, so the two cannot disagree:

    python -m voxgate openapi --markdown > docs/api.md

``tests/test_api_docs.py`` fails when the committed file differs from what
this prints. Pure text rendering, deterministic (document order).
"""

from __future__ import annotations

import json
from typing import Any

from voxgate.proxy.openapi import document

__all__ = ["markdown"]

HEADER = """# voxgate HTTP API reference

<!-- Generated from voxgate/proxy/openapi.py: do not edit by hand.
     Regenerate with: python -m voxgate openapi --markdown > docs/api.md -->

{description}

The same document as OpenAPI 3.1 JSON: `GET /openapi.json` on a running server, or
`voxgate openapi`. Realtime events on the WebSocket and the WebRTC
data channel are OpenAI's (https://platform.openai.com/docs/api-reference/realtime);
this page covers the HTTP side.
"""


def _type(schema: dict[str, Any]) -> str:
    """A short type name of a JSON Schema: ``string``, ``integer | null``,
    ``SessionRecord``, ``array of IceServer``, ``"realtime" | "transcription"``."""
    if "$ref" in schema:
        return f"[{schema['$ref'].rsplit('/', 1)[-1]}](#{schema['$ref'].rsplit('/', 1)[-1].lower()})"
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "allOf" in schema:
        return " + ".join(_type(s) for s in schema["allOf"])
    kind = schema.get("type")
    if kind == "array" and "items" in schema:
        return f"array of {_type(schema['items'])}"
    if isinstance(kind, list):
        return " \\| ".join(kind)
    if kind is None:
        return "any"
    extra = []
    if "pattern" in schema:
        extra.append(f"pattern `{schema['pattern']}`")
    for bound in ("minimum", "maximum", "default"):
        if bound in schema:
            extra.append(f"{bound} {schema[bound]}")
    return str(kind) + (f" ({', '.join(extra)})" if extra else "")


def _auth(op: dict[str, Any]) -> str:
    """The accepted credentials (any one), named as in the Credentials table."""
    names = [name for entry in op.get("security", []) for name in entry]
    return " or ".join(f"`{n}`" for n in names) if names else "none"


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    summary = op["summary"] if op["summary"].endswith(".") else op["summary"] + "."
    out = [f"### `{method.upper()} {path}`", "", summary, "", f"- **Auth:** {_auth(op)}"]
    body = op.get("requestBody")
    if body:
        for media, content in body["content"].items():
            out.append(f"- **Request body:** `{media}` {_type(content['schema'])}")
    for status, response in op["responses"].items():
        code = int(status)
        if code >= 400:
            continue
        content = response.get("content", {})
        shape = "; ".join(f"`{media}` {_type(c['schema']) if c['schema'] else ''}".rstrip()
                          for media, c in content.items())
        out.append(f"- **{status}** {response['description']}" + (f": {shape}" if shape else ""))
    errors = [s for s in op["responses"] if int(s) >= 400]
    if errors:
        out.append("- **Errors:** " + ", ".join(
            f"{s} {op['responses'][s]['description'].lower()}" for s in errors))
    params = op.get("parameters", [])
    if params:
        out += ["", "| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        out += [f"| `{p['name']}` | {p['in']} | {_type(p['schema'])} | "
                f"{'yes' if p.get('required') else 'no'} | {p.get('description', '')} |"
                for p in params]
    return out + [""]


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name}", ""]
    parts = schema.get("allOf")
    if parts:
        out.append("All the fields of " + " and ".join(_type(p) for p in parts if "$ref" in p)
                   + (", plus:" if any("properties" in p for p in parts) else "."))
        out.append("")
        schema = next((p for p in parts if "properties" in p), {})
    props = schema.get("properties")
    if not props:
        return out + ["Any JSON object." if not parts else "", ""]
    required = set(schema.get("required", []))
    out += ["| field | type | required |", "|---|---|---|"]
    for field, sub in props.items():
        kind = _type(sub)
        if sub.get("type") == "object" and "properties" in sub:
            inner = ", ".join(f"`{k}`: {_type(v)}" for k, v in sub["properties"].items())
            kind = f"object {{{inner}}}" if inner else "object"
        out.append(f"| `{field}` | {kind} | {'yes' if field in required else 'no'} |")
    return out + [""]


def markdown(doc: dict[str, Any] | None = None) -> str:
    """The API reference of ``doc`` (default: ``document()``) as Markdown:
    credentials, common headers, one section per tag with every operation,
    then every schema."""
    doc = document() if doc is None else doc
    components = doc["components"]
    schemes = components["securitySchemes"]
    out = [HEADER.format(description=doc["info"]["description"]).rstrip(), ""]
    out += ["## Credentials", "", "| scheme | what |", "|---|---|"]
    out += [f"| `{name}` | {s.get('description', name)} ({s['type']}"
            f"{', ' + s['scheme'] if 'scheme' in s else ''}"
            f"{', ' + s['in'] + ' ' + s['name'] if 'in' in s else ''}) |"
            for name, s in schemes.items()]
    out += ["", "## Headers", "", "| header | meaning |", "|---|---|"]
    out += [f"| `{name}` | {h['description']} |" for name, h in components["headers"].items()]
    out.append("")
    by_tag: dict[str, list[list[str]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op["tags"][0], []).append(_operation(method, path, op))
    for tag, ops in by_tag.items():
        out += [f"## {tag.capitalize()}", ""]
        for lines in ops:
            out += lines
    out += ["## Schemas", ""]
    for name, schema in components["schemas"].items():
        out += _schema(name, schema)
    return "\n".join(out).rstrip() + "\n"


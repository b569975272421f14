"""Web origins for project allowlists: normalization and matching."""

from __future__ import annotations

import pytest

from voxgate.models.origins import MAX_ORIGINS, normalize_origin, origin_allowed, parse_origins


@pytest.mark.parametrize("text, origin", [
    ("https://App.Example.com", "https://app.example.com"),
    ("https://app.example.com:443/", "https://app.example.com"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://localhost:80", "http://localhost"),
    ("http://[::1]:3000", "http://[::1]:3000"),
])
def test_normalize(text, origin):
    assert normalize_origin(text) == origin


@pytest.mark.parametrize("text", ["app.example.com", "ftp://x.example", "https://x.example/app",
                                  "https://*.example.com", "https://u@x.example", "https://",
                                  "https://x.example:99999", "null"])
def test_not_an_origin(text):
    with pytest.raises(ValueError):
        normalize_origin(text)


def test_parse_dedupes_and_bounds():
    assert parse_origins(["https://a.example", "HTTPS://A.example:443"]) == ("https://a.example",)
    with pytest.raises(ValueError):
        parse_origins([f"https://{i}.example" for i in range(MAX_ORIGINS + 1)])


def test_allowed():
    allowed = ("https://app.example.com",)
    assert origin_allowed("https://app.example.com", allowed)
    assert origin_allowed("https://APP.example.com:443", allowed)
    assert not origin_allowed("https://evil.example", allowed)
    assert not origin_allowed("null", allowed)
    assert origin_allowed(None, allowed)  # not from a browser page
    assert origin_allowed("https://evil.example", ())  # no allowlist: any origin

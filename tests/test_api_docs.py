"""docs/api.md is the API reference generated from the OpenAPI document:
the committed file is what the generator prints now, so a route or schema
change that is not regenerated fails here."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from voxgate.proxy.openapi import ROUTES
from voxgate.proxy.openapi_markdown import markdown

API_MD = ROOT / "docs" / "api.md"
REGENERATE = "python -m voxgate openapi --markdown > docs/api.md"


def test_committed_api_reference_is_up_to_date():
    assert API_MD.read_text() == markdown(), f"docs/api.md is stale: run `{REGENERATE}`"


def test_every_route_is_in_the_reference():
    text = API_MD.read_text()
    for op in ROUTES:
        assert f"### `{op.method} {op.path}`" in text, (op.method, op.path)


def test_the_generator_command_prints_it():
    out = subprocess.run([sys.executable, "-m", "voxgate", "openapi", "--markdown"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == markdown() and out.stderr == ""

"""``voxgate admin create-operator`` and ``voxgate web create-operator``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, SLOW


def voxgate(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "voxgate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60 * SLOW)


def test_create_operator_commands(tmp_path):
    out = voxgate("admin", "create-operator", "Ops@Example.com", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)  # stdout is the JSON alone; notices go to stderr
    assert made["email"] == "ops@example.com" and made["role"] == "operator"
    assert len(made["password"]) >= 12 and "shown once" in out.stderr
    weak = voxgate("web", "create-operator", "ops@example.com", "--password", "12345678",
                   cwd=tmp_path)
    assert weak.returncode == 2 and "password refused" in weak.stderr
    again = voxgate("web", "create-operator", "ops@example.com", "--password",
                    "a new operator password", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["id"] == made["id"] and "password" not in second
    accounts = voxgate("admin", "accounts", cwd=tmp_path)
    assert accounts.stdout.count("ops@example.com") == 1

"""The README's path as a user takes it: `voxgate serve` on an empty data
directory (embedded local voice provider), then `voxgate call` with real
speech, then the admin commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave

import pytest

from tests.conftest import ROOT, SLOW, free_port, wait_port


@pytest.fixture
def served(tmp_path):
    """`voxgate serve` in tmp_path (its ./data), yielding (url, first stdout lines)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxgate", "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        wait_port(port, 60 * SLOW, proc)
        lines = [proc.stdout.readline() for _ in range(2)]
        yield f"http://127.0.0.1:{port}", lines, env
    finally:
        proc.terminate()
        proc.wait(15)


def voxgate(*args, cwd, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "voxgate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout * SLOW)


def test_serve_then_call_with_real_speech(served, tmp_path, speech_dir):
    url, lines, env = served
    demo = [line for line in lines if line.startswith("demo API key: ")]
    assert demo, lines
    key = demo[0].split(": ", 1)[1].strip()
    assert (tmp_path / "data" / "demo_api_key").read_text().strip() == key
    assert oct((tmp_path / "data" / "demo_api_key").stat().st_mode & 0o777) == "0o600"

    out = tmp_path / "reply.wav"
    result = voxgate("call", "--audio", str(speech_dir / "jfk.flac"), "--url", url,
                     "--out", str(out), "--json", "--speed", "2", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert any(w in body["heard"].lower() for w in ("country", "fellow", "america")), body
    assert body["reply"]
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1
        assert wav.getnframes() / 24000 > 0.5
    session = body["session"]
    assert session["billable"] is True and session["reason"] == "billable"
    assert 10_900 <= session["audio_in_ms"] <= 11_100
    assert session["transport"] == "websocket" and session["status"] == "completed"

    # plain output names the verdict too
    result = voxgate("call", "--audio", str(speech_dir / "librivox-0880.wav"), "--url", url,
                     "--out", str(tmp_path / "r2.wav"), "--speed", "3", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "heard:" in result.stdout and "session:" in result.stdout


def test_call_reports_bad_audio_clearly(served, tmp_path, speech_dir):
    url, _, env = served
    result = voxgate("call", "--audio", str(speech_dir / "malformed-bad.wav"), "--url", url,
                     cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_admin_commands(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    made = voxgate("admin", "create-account", "a@example.com", "--plan", "starter",
                   cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    account = json.loads(made.stdout)
    assert account["plan"] == "starter"
    project = json.loads(voxgate("admin", "create-project", account["id"], "app",
                                 cwd=tmp_path, env=env).stdout)
    key_out = voxgate("admin", "create-key", project["id"], cwd=tmp_path, env=env).stdout
    key = json.loads(key_out.splitlines()[0])
    assert key["key"].startswith("vg_live_") and key["key"].startswith(key["prefix"])
    usage = json.loads(voxgate("admin", "usage", account["id"], cwd=tmp_path, env=env).stdout)
    assert usage["plan"] == "starter" and usage["sessionsIncluded"] == 5000
    assert usage["sessionsUsed"] == 0 and usage["estimatedMinutes"] == 10000
    bad = voxgate("admin", "set-plan", account["id"], "platinum", cwd=tmp_path, env=env)
    assert bad.returncode == 1 and "platinum" in bad.stdout
    origins = voxgate("admin", "set-origins", project["id"], "HTTPS://App.example.com:443",
                      "http://127.0.0.1:3000", cwd=tmp_path, env=env)
    assert json.loads(origins.stdout)["allowed_origins"] == [
        "https://app.example.com", "http://127.0.0.1:3000"]
    bad = voxgate("admin", "set-origins", project["id"], "https://app.example.com/path",
                  cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "not an origin" in bad.stdout
    cleared = voxgate("admin", "set-origins", project["id"], cwd=tmp_path, env=env)
    assert json.loads(cleared.stdout)["allowed_origins"] == []

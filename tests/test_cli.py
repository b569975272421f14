"""The README's path as a user takes it: `voxgate serve` on an empty data
directory (embedded local voice provider), then `voxgate call` with no
arguments (the shipped sample), then the admin commands; and what the
commands say when something is wrong."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import wave

import pytest

from tests.conftest import ROOT, SLOW, free_port, wait_port


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any VOXGATE_ setting, running this tree's voxgate."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`voxgate serve` in a fresh directory (its ./data), on a free port given
    as VOXGATE_PORT so that `voxgate call` there needs no arguments; yields
    (url, first stdout lines, env, directory)."""
    cwd = tmp_path_factory.mktemp("served")
    port = free_port()
    env = clean_env(VOXGATE_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxgate", "serve"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        wait_port(port, 60 * SLOW, proc)
        lines = [proc.stdout.readline() for _ in range(2)]
        yield f"http://127.0.0.1:{port}", lines, env, cwd
    finally:
        proc.terminate()
        proc.wait(15)


def voxgate(*args, cwd, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "voxgate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout * SLOW)


def test_call_without_arguments_is_a_billable_session(served):
    """The README's first call: `voxgate call` with no argument but
    ``--speed 4`` (the 11 s sample at 4× real time instead of the default
    1×: the verdict counts audio, not wall time), against a fresh server,
    streams the shipped sample and prints a billable session."""
    _, lines, env, cwd = served
    demo = [line for line in lines if line.startswith("demo API key: ")]
    assert demo, lines
    key = demo[0].split(": ", 1)[1].strip()
    assert (cwd / "data" / "demo_api_key").read_text().strip() == key
    assert oct((cwd / "data" / "demo_api_key").stat().st_mode & 0o777) == "0o600"

    from voxgate.cli import build_parser

    defaults = build_parser().parse_args(["call"])
    assert (defaults.speed, defaults.audio, defaults.out) == (1.0, None, "reply.wav")
    result = voxgate("call", "--speed", "4", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "streaming the sample jfk.flac (11.0 s)" in out, out
    heard = next(line for line in out.splitlines() if line.startswith("heard:"))
    assert any(w in heard.lower() for w in ("country", "fellow", "america")), out
    assert "— billable (reason: billable)" in out, out
    with wave.open(str(cwd / "reply.wav")) as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1
        assert wav.getnframes() / 24000 > 0.5


def test_call_json_with_another_recording(served, tmp_path, speech_dir):
    url, _, env, cwd = served
    out = tmp_path / "reply.wav"
    result = voxgate("call", "--audio", str(speech_dir / "librivox-0880.wav"), "--url", url,
                     "--out", str(out), "--json", "--speed", "3", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["heard"] and body["reply"] and body["reply_audio"] == str(out), body
    assert out.is_file() and body["reply_audio_ms"] > 0
    session = body["session"]
    assert 2_900 <= session["audio_in_ms"] <= 3_100  # the 3.0 s recording
    assert session["transport"] == "websocket" and session["status"] == "completed"


def test_call_reports_bad_audio_clearly(served, speech_dir):
    url, _, env, cwd = served
    result = voxgate("call", "--audio", str(speech_dir / "malformed-bad.wav"), "--url", url,
                     cwd=cwd, env=env)
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_call_with_a_refused_key_shows_the_servers_error(served):
    url, _, env, cwd = served
    result = voxgate("call", "--key", "vg_live_not-a-real-key", "--url", url, cwd=cwd, env=env)
    assert result.returncode == 1
    assert "HTTP 401 invalid_api_key: " in result.stderr, result.stderr
    message = result.stderr.split("invalid_api_key: ", 1)[1].strip()
    assert message and "Traceback" not in result.stderr


def test_call_with_nothing_listening_says_so(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = voxgate("call", "--key", "vg_live_x", "--url", url, cwd=tmp_path, env=clean_env(), timeout=60)
    assert result.returncode == 1
    assert f"nothing listens at {url}" in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_is_one_line_and_creates_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = voxgate("serve", "--port", str(port), cwd=tmp_path, env=clean_env(), timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert "--port" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no data directory, database or demo key


def test_help_is_plain_text(tmp_path):
    result = voxgate("--help", cwd=tmp_path, env=clean_env(), timeout=60)
    assert result.returncode == 0
    assert "\x1b" not in result.stdout and "``" not in result.stdout
    assert "serve" in result.stdout and "call" in result.stdout


@pytest.fixture
def admin(tmp_path, monkeypatch, capsys):
    """``admin(*args) -> (exit status, stdout, stderr)``: ``voxgate admin …``
    run in-process (``voxgate.cli.main``) on a data directory in tmp_path."""
    from voxgate.cli import main

    for name in [n for n in os.environ if n.startswith("VOXGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["admin", *args])
        out, err = capsys.readouterr()
        return status, out, err
    return run


def test_admin_commands_print_json_and_name_valid_plans(admin):
    status, out, err = admin("create-account", "a@example.com", "--plan", "starter")
    assert status == 0, err
    account = json.loads(out)
    assert account["plan"] == "starter"
    project = json.loads(admin("create-project", account["id"], "app")[1])
    status, out, err = admin("create-key", project["id"])
    key = json.loads(out)  # only JSON on stdout
    assert key["key"].startswith("vg_live_") and key["key"].startswith(key["prefix"])
    assert "shown once" in err
    assert json.loads(admin("create-admin-key", account["id"])[1])["key"].startswith("vg_admin_")
    status, out, err = admin("create-operator", "op@example.com")
    assert status == 0, err
    operator = json.loads(out)
    assert operator["role"] == "operator" and operator["password"]
    assert "/account/2fa" in err and "shown once" in err
    usage = json.loads(admin("usage", account["id"])[1])
    assert usage["plan"] == "starter" and usage["sessionsIncluded"] == 5000
    assert usage["sessionsUsed"] == 0 and usage["estimatedMinutes"] == 10000

    status, out, err = admin("set-plan", account["id"], "platinum")
    assert status == 2 and out == ""
    assert "unknown plan 'platinum'; valid plans: free, starter, growth" in err
    status, out, err = admin("create-account", "b@example.com", "--plan", "gold")
    assert status == 2 and out == "" and "valid plans: free, starter, growth" in err
    status, out, _ = admin("set-plan", account["id"], "growth")
    assert json.loads(out) == {"id": account["id"], "plan": "growth"}
    status, out, err = admin("set-plan", "acct_missing", "growth")
    assert status == 1 and out == "" and "acct_missing" in err

    status, out, _ = admin("set-origins", project["id"], "HTTPS://App.example.com:443",
                           "http://127.0.0.1:3000")
    assert json.loads(out)["allowed_origins"] == ["https://app.example.com", "http://127.0.0.1:3000"]
    status, out, err = admin("set-origins", project["id"], "https://app.example.com/path")
    assert status == 2 and out == "" and "not an origin" in err
    assert json.loads(admin("set-origins", project["id"])[1])["allowed_origins"] == []
    assert json.loads(admin("revoke-key", key["id"])[1]) == {"id": key["id"], "revoked": True}


def test_serving_freezes_the_start_up_heap():
    """What start-up made is out of the cyclic collector's sight, so a full
    collection during calls scans only what sessions made (a whole-heap pass
    paused the event loop for 100-146 ms with 50 WebRTC calls live)."""
    import gc

    from voxgate.cli import freeze_startup_heap

    before = gc.get_freeze_count()
    made = [[i] for i in range(1000)]  # start-up objects
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= before + 1000
        scanned = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
        assert not any(id(x) in scanned for x in made)  # frozen: in no generation
    finally:
        gc.unfreeze()

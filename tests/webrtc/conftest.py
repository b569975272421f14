"""Fixtures for WebRTC tests: voxgate with loopback host candidates, real
speech at 48 kHz, coturn on loopback, and the system Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOW, free_port

TURN_SECRET = "voxgate-test-secret"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def jfk48(speech_dir) -> bytes:
    """jfk.flac as 48 kHz PCM16 mono (11.0 s)."""
    from voxgate.voice.audio import load_pcm16

    return load_pcm16(speech_dir / "jfk.flac", 48000)


@pytest.fixture
def rtc_settings():
    """Overrides for ``make_server``: loopback host candidates, short ICE timeout."""
    return {"webrtc": {"host_addresses": ["127.0.0.1"], "ice_timeout_s": 5.0 * SLOW}}


def require(binary: str, package: str) -> str:
    path = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if path is None:
        pytest.fail(f"{binary} is not installed: `apt-get install {package}` "
                    "(or `make test`, which installs it)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def turn_server(tmp_path_factory):
    """coturn on 127.0.0.1 with a TURN REST shared secret:
    ``(url, secret)``."""
    binary = require("turnserver", "coturn")
    port = free_port()
    log = tmp_path_factory.mktemp("turn") / "turnserver.log"
    cmd = [
        binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
        f"--listening-port={port}", "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}",
        "--realm=voxgate.test", "--no-tls", "--no-dtls", "--allow-loopback-peers", "--no-cli",
        "--fingerprint", "--min-port=49160", "--max-port=49400", "--no-tcp-relay",
        f"--log-file={log}", "--simple-log", "--no-stdout-log",
        "--pidfile", str(log.with_suffix(".pid")), f"--userdb={log.with_suffix('.db')}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_udp_log(log, proc, port)
        yield f"turn:127.0.0.1:{port}?transport=udp", TURN_SECRET
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_udp_log(log: Path, proc: subprocess.Popen, port: int, timeout_s: float = 10.0) -> None:
    """Wait until coturn answers a STUN Binding request (RFC 5389 §6) on ``port``."""
    import os
    import socket
    import time

    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    deadline = time.monotonic() + timeout_s * SLOW
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                text = log.read_text() if log.exists() else ""
                raise RuntimeError(f"turnserver exited with {proc.returncode}: {text[-2000:]}")
            sock.sendto(request, ("127.0.0.1", port))
            try:
                data, _ = sock.recvfrom(2048)
            except OSError:
                continue
            if data[:2] == b"\x01\x01":  # Binding success response
                return
    raise TimeoutError("turnserver did not answer STUN: "
                       + (log.read_text()[-2000:] if log.exists() else "no log"))

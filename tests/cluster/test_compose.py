"""compose.yaml (the reference deployment of docs/deploy.md) cannot run
here (no Docker daemon): it is parsed and checked for what it must say: the
services, one image for both voxgate instances with distinct instance ids,
settings voxgate knows (each a ``Settings`` field) pointing at the
compose services, the load balancer reaching both instances, coturn's
published UDP ports matching its relay range, a stop grace period longer
than the drain, and an example .env giving every variable it uses."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.conftest import ROOT
from tests.served import load

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
NGINX = ROOT / "deploy" / "nginx.conf"
VAR = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def example_env() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:?error}`` and ``${VAR:-default}``."""
    def value(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        assert op == "-", f"${{{name}}} is required and the example .env leaves it empty"
        return arg
    return VAR.sub(value, text)


def compose() -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), example_env()))


def dockerfile_env() -> dict[str, str]:
    text = re.search(r"^ENV (.*?)\n\n", (ROOT / "Dockerfile").read_text(), re.M | re.S)
    assert text
    return dict(re.findall(r"(\w+)=(\S+)", text.group(1)))


def known_setting(name: str) -> bool:
    """Whether ``VOXGATE_A__B`` names a field of ``Settings`` (pydantic-settings
    ignores unknown environment variables, so a typo would pass silently)."""
    from pydantic import BaseModel

    from voxgate.config import Settings

    model: type[BaseModel] = Settings
    *parents, leaf = name.removeprefix("VOXGATE_").lower().split("__")
    for part in parents:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) \
                or not issubclass(field.annotation, BaseModel):
            return False
        model = field.annotation
    return leaf in model.model_fields


def test_every_variable_has_an_example():
    used = {m.group(1) for m in VAR.finditer(COMPOSE.read_text())}
    assert used <= set(example_env()), used - set(example_env())


def test_services_and_their_wiring():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"lb", "voxgate-1", "voxgate-2", "postgres", "redis", "coturn"}
    nodes = [services["voxgate-1"], services["voxgate-2"]]
    assert nodes[0]["build"] == nodes[1]["build"] == "." and nodes[0]["image"] == nodes[1]["image"]
    ids = [n["environment"]["VOXGATE_INSTANCE_ID"] for n in nodes]
    assert len(set(ids)) == 2
    assert nodes[0]["volumes"] != nodes[1]["volumes"]
    for node in nodes:
        env = {**dockerfile_env(), **{k: str(v) for k, v in node["environment"].items()}}
        unknown = [k for k in env if k.startswith("VOXGATE_") and not known_setting(k)]
        assert not unknown, unknown
        settings = load(env)
        db, redis = urlsplit(settings.database_url), urlsplit(settings.admission_url)
        assert (db.scheme, db.hostname, db.port, db.path) == ("postgresql", "postgres", 5432,
                                                              "/voxgate")
        assert db.username == services["postgres"]["environment"]["POSTGRES_USER"]
        assert db.password == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
        assert settings.upstream.openai_api_key is not None
        assert settings.webrtc.turn_secret is not None
        assert settings.webrtc.turn_secret.get_secret_value() == \
            next(a.split("=", 1)[1] for a in services["coturn"]["command"]
                 if a.startswith("--static-auth-secret="))
        assert all(":3478?" in url for url in settings.webrtc.turn_urls)
        grace = int(node["stop_grace_period"].rstrip("s"))
        assert grace >= settings.drain_timeout_s + 10, (grace, settings.drain_timeout_s)
        assert set(node["depends_on"]) == {"postgres", "redis"}
        assert settings.port == 8080 and settings.host == "0.0.0.0"


def test_the_load_balancer_reaches_both_instances_with_websocket_upgrades():
    conf = NGINX.read_text()
    upstreams = re.findall(r"^\s*server (\S+):(\d+)", conf, re.M)
    assert upstreams == [("voxgate-1", "8080"), ("voxgate-2", "8080")]
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_next_upstream error timeout http_503;" in conf
    lb = compose()["services"]["lb"]
    assert lb["volumes"] == ["./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert Path(ROOT / "deploy" / "nginx.conf").is_file()


def test_coturn_publishes_its_listening_port_and_relay_range():
    coturn = compose()["services"]["coturn"]
    args = dict(a.lstrip("-").split("=", 1) for a in coturn["command"] if "=" in a)
    lo, hi = int(args["min-port"]), int(args["max-port"])
    ports = coturn["ports"]
    assert f"{args['listening-port']}:{args['listening-port']}/udp" in ports
    assert f"{lo}-{hi}:{lo}-{hi}/udp" in ports

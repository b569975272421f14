"""The aiohttp application keys shared by the proxy's modules.

Kept apart from the composition root (``voxgate.server``) so that handlers,
plugins and the app factory can all import them from below it.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from voxgate.config import Settings
from voxgate.proxy.cluster import Cluster
from voxgate.proxy.gateway import Gateway
from voxgate.proxy.upstream import UpstreamConnector

__all__ = ["GATEWAY", "CONNECTOR", "SETTINGS", "PROVIDER", "CLUSTER", "DEMO_KEY_FILE", "default_key"]

GATEWAY = web.AppKey("gateway", Gateway)
CONNECTOR = web.AppKey("connector", UpstreamConnector)
SETTINGS = web.AppKey("settings", Settings)
PROVIDER = web.AppKey("voice_provider", object)
# ``voxgate.proxy.cluster.Cluster`` when admission is shared through Redis:
# call control for WebRTC calls held by another process.
CLUSTER = web.AppKey("cluster", Cluster)

# The demo account's API key, under ``Settings.data_dir`` (mode 0600),
# written on first start (``voxgate.server.ensure_demo``).
DEMO_KEY_FILE = "demo_api_key"


def default_key(settings: Settings) -> str | None:
    """The demo project's API key kept in the data directory
    (``DEMO_KEY_FILE``), if any; for ``voxgate call`` and ``voxgate loadtest``."""
    path = Path(settings.data_dir) / DEMO_KEY_FILE
    return path.read_text().strip() if path.is_file() else None

"""The aiohttp application keys shared by the proxy's modules.

Kept apart from ``voxgate.proxy.app`` so that handlers, plugins and the
app factory can all import them without an import cycle through the app.
"""

from __future__ import annotations

from aiohttp import web

from voxgate.config import Settings
from voxgate.proxy.cluster import Cluster
from voxgate.proxy.gateway import Gateway
from voxgate.proxy.upstream import UpstreamConnector

__all__ = ["GATEWAY", "CONNECTOR", "SETTINGS", "PROVIDER", "CLUSTER"]

GATEWAY = web.AppKey("gateway", Gateway)
CONNECTOR = web.AppKey("connector", UpstreamConnector)
SETTINGS = web.AppKey("settings", Settings)
PROVIDER = web.AppKey("voice_provider", object)
# ``voxgate.proxy.cluster.Cluster`` when admission is shared through Redis:
# call control for WebRTC calls held by another process.
CLUSTER = web.AppKey("cluster", Cluster)

"""Admission: may this request or session start (quota, concurrency,
requests per minute)? Adapters over the pure rules of ``voxgate.metering``
(``decide``, ``rate``): ``base`` holds the ``Admission`` protocol, ``Lease``
and ``InProcessAdmission`` (one process), ``redis`` holds ``RedisAdmission``
(shared by several processes and hosts; Redis errors translated into
``ServiceUnavailable`` where they are raised). ``open_admission(settings)``
builds the one the settings name.
"""

from __future__ import annotations

from voxgate.admission.base import Admission, InProcessAdmission, Lease
from voxgate.config import Settings
from voxgate.errors import ConfigError

__all__ = ["Admission", "InProcessAdmission", "Lease", "open_admission"]


def open_admission(settings: Settings) -> Admission:
    """The admission backend the settings name: in-process by default,
    Redis when ``admission_url`` is ``redis://…``.

    Raises:
        ConfigError: an ``admission_url`` that is not Redis's.
    """
    url = settings.admission_url
    if not url:
        return InProcessAdmission(lease_ttl_s=settings.lease_ttl_s)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"unsupported admission_url {url!r}: use redis://host:port/db")
    from voxgate.admission.redis import RedisAdmission

    return RedisAdmission(url, lease_ttl_s=settings.lease_ttl_s,
                          prefix=settings.admission_prefix,
                          max_connections=settings.redis_max_connections,
                          pool_timeout_s=settings.redis_pool_timeout_s)

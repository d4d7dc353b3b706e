"""Health endpoints for FastAPI that answer within a few seconds whatever Redis and the workers do.

::

    from otel_agensium import health_router
    api.include_router(health_router(app=celery_app))

* ``GET /health``: the process is alive. Touches nothing, always 200.
* ``GET /health/ready``: 200 when every check passes, else 503; one result per check:
  ``redis`` (INFO answered) and ``workers`` (at least ``min_workers`` workers answered an
  ``active_queues`` broadcast).
* ``GET /health/queue``: a subset of Redis INFO, the live workers per queue and the
  queue depths. 503 when one of them could not be read; no workers is data, not an error.

Every check is a :class:`~otel_agensium._probe.Probe`: it runs in a daemon thread
(the event loop never blocks), the request waits for it at most ``timeout`` seconds
(``AGENSIUM_HEALTH_TIMEOUT``) on top of the clients' own socket timeouts, one run per
check is in flight at a time, and its answer (success or failure) is reused for
``cache_ttl`` seconds (``AGENSIUM_HEALTH_CACHE_TTL``), so a burst of probes costs one
Redis round trip, also while Redis is down. Bodies and log lines carry redacted URLs and scrubbed error
text: no password, whether the URL has one or not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from ._probe import Probe
from .celery.queues import CeleryQueues
from .redact import describe, redact_url, url_password
from .settings import load

_log = logging.getLogger("otel_agensium.health")

# The parts of Redis INFO worth showing; the rest (paths, config file, ...) stays private.
REDIS_INFO_FIELDS = (
    "redis_version",
    "redis_mode",
    "role",
    "uptime_in_seconds",
    "connected_clients",
    "blocked_clients",
    "used_memory",
    "used_memory_human",
    "used_memory_peak_human",
    "maxmemory",
    "maxmemory_human",
    "maxmemory_policy",
    "mem_fragmentation_ratio",
    "instantaneous_ops_per_sec",
    "rejected_connections",
    "evicted_keys",
    "expired_keys",
)
NO_STORE = {"Cache-Control": "no-store"}


class HealthChecks:
    """The checks behind the router; usable without FastAPI (``await checks.ready()``)."""

    def __init__(
        self,
        app: Any = None,
        *,
        redis_url: str | None = None,
        timeout: float = 2.0,
        inspect_timeout: float = 1.0,
        cache_ttl: float = 1.0,
        queues: Iterable[str] | None = None,
        min_workers: int = 1,
    ) -> None:
        self.timeout = timeout
        self.min_workers = min_workers
        # The broadcast collects replies for a fixed window; it must end well inside the timeout.
        window = min(inspect_timeout, timeout / 2)
        self.celery = CeleryQueues(app, queues, timeout=timeout, inspect_timeout=window) if app is not None else None
        self.secrets: list[str] = list(self.celery.secrets) if self.celery else []
        self.redis_target: str | None = None
        client = None
        if redis_url:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(
                redis_url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                max_connections=4,
                health_check_interval=0,
            )
            self.redis_target = redact_url(redis_url)
            password = url_password(redis_url)
            if password:
                self.secrets.append(password)
        elif self.celery is not None and self.celery.is_redis:
            client = self.celery.redis_client()
            self.redis_target = self.celery.broker
        self._redis: Any = client
        self.redis_probe = Probe(self._redis_info, cache_ttl, "health-redis") if client is not None else None
        self.worker_probe = Probe(self.celery.workers, cache_ttl, "health-workers") if self.celery else None
        self.length_probe = Probe(self.celery.lengths, cache_ttl, "health-queues") if self.celery else None
        self._failing: dict[str, bool] = {}

    def _redis_info(self) -> dict[str, Any]:
        info = self._redis.info()
        return {key: info[key] for key in REDIS_INFO_FIELDS if key in info}

    async def _check(self, name: str, probe: Probe) -> tuple[dict[str, Any], Any]:
        started = time.monotonic()
        value: Any = None
        error: str | None
        try:
            sample = await probe.wait(self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            error = f"TimeoutError: no answer within {self.timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - reported in the body, never raised
            error = describe(exc, self.secrets)
        else:
            error = None
            value = sample.value
        now = time.monotonic()
        result: dict[str, Any] = {"ok": error is None, "latency_ms": round((now - started) * 1000, 1)}
        if error is None:
            result["age_s"] = round(now - sample.at, 3)
        else:
            result["error"] = error
        self._transition(name, error)
        return result, value

    def _transition(self, name: str, error: str | None) -> None:
        failing = error is not None
        if self._failing.get(name, False) != failing:
            self._failing[name] = failing
            if failing:
                _log.warning("otel-agensium: health check %s failed: %s", name, error)
            else:
                _log.info("otel-agensium: health check %s passes again", name)

    async def _gather(self, names: Iterable[str]) -> dict[str, tuple[dict[str, Any], Any]]:
        probes = {"redis": self.redis_probe, "workers": self.worker_probe, "queues": self.length_probe}
        chosen = [(name, probe) for name in names if (probe := probes[name]) is not None]
        results = await asyncio.gather(*(self._check(name, probe) for name, probe in chosen))
        return {name: result for (name, _), result in zip(chosen, results, strict=True)}

    @staticmethod
    def _live(by_queue: dict[str, list[str]] | None) -> list[str]:
        return sorted({worker for workers in (by_queue or {}).values() for worker in workers})

    async def ready(self) -> tuple[int, dict[str, Any]]:
        results = await self._gather(("redis", "workers"))
        checks: dict[str, Any] = {}
        if "redis" in results:
            checks["redis"] = results["redis"][0]
        if "workers" in results:
            check, by_queue = results["workers"]
            if check["ok"]:
                live = self._live(by_queue)
                check["count"] = len(live)
                if len(live) < self.min_workers:
                    check["ok"] = False
                    check["error"] = f"{len(live)} live worker(s) answered; at least {self.min_workers} needed"
                self._transition("workers-count", check.get("error"))
            checks["workers"] = check
        ok = all(check["ok"] for check in checks.values())
        return (200 if ok else 503), {"status": "ready" if ok else "not ready", "checks": checks}

    async def queue(self) -> tuple[int, dict[str, Any]]:
        results = await self._gather(("redis", "workers", "queues"))
        body: dict[str, Any] = {}
        if self.celery is not None:
            body["broker"] = self.celery.broker
        if "redis" in results:
            check, info = results["redis"]
            body["redis"] = {**check, "target": self.redis_target, **({"info": info} if check["ok"] else {})}
        if "workers" in results:
            check, by_queue = results["workers"]
            if check["ok"]:
                live = self._live(by_queue)
                check.update(
                    count=len(live), names=live, by_queue={queue: len(workers) for queue, workers in by_queue.items()}
                )
            body["workers"] = check
        if "queues" in results:
            check, lengths = results["queues"]
            if check["ok"]:
                check["lengths"] = lengths
            body["queues"] = check
        ok = all(part["ok"] for key, part in body.items() if key != "broker")
        body["status"] = "ok" if ok else "degraded"
        return (200 if ok else 503), body


def health_router(
    app: Any = None,
    *,
    redis_url: str | None = None,
    timeout: float | None = None,
    inspect_timeout: float | None = None,
    cache_ttl: float | None = None,
    queues: Iterable[str] | None = None,
    min_workers: int = 1,
    prefix: str = "/health",
    tags: Iterable[str] = ("health",),
) -> Any:
    """A FastAPI ``APIRouter`` with ``{prefix}``, ``{prefix}/ready`` and ``{prefix}/queue``.

    ``app`` is the Celery app (workers and queue depths; its broker is the Redis checked
    when ``redis_url`` is not given). Unset arguments come from the settings
    (``AGENSIUM_REDIS_URL``, ``AGENSIUM_HEALTH_TIMEOUT``, ``AGENSIUM_INSPECT_TIMEOUT``,
    ``AGENSIUM_HEALTH_CACHE_TTL``, ``AGENSIUM_QUEUES``). The checks are on the router
    as ``router.health_checks``.
    """
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    settings = load()
    checks = HealthChecks(
        app,
        redis_url=redis_url or settings.redis_url,
        timeout=settings.health_timeout if timeout is None else timeout,
        inspect_timeout=settings.inspect_timeout if inspect_timeout is None else inspect_timeout,
        cache_ttl=settings.health_cache_ttl if cache_ttl is None else cache_ttl,
        queues=settings.queues if queues is None else queues,
        min_workers=min_workers,
    )
    router = APIRouter(prefix=prefix, tags=list(tags))

    @router.get("", summary="Alive: touches no dependency")
    async def alive() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    @router.get("/ready", summary="Ready: Redis and workers, 200 or 503")
    async def ready() -> JSONResponse:
        status, body = await checks.ready()
        return JSONResponse(body, status_code=status, headers=NO_STORE)

    @router.get("/queue", summary="Redis INFO subset, live workers and queue depths")
    async def queue() -> JSONResponse:
        status, body = await checks.queue()
        return JSONResponse(body, status_code=status, headers=NO_STORE)

    router.health_checks = checks  # type: ignore[attr-defined]
    return router

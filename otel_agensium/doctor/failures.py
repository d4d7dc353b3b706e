"""What went wrong with a connection, and the one-sentence fix for it."""

from __future__ import annotations

import concurrent.futures
import socket

_AUTH = (
    "noauth",
    "wrongpass",
    "invalid password",
    "authentication",
    "access_refused",
    "accessrefused",
    "username-password",
    "access refused",
)
_DNS = ("name or service not known", "nodename nor servname", "temporary failure in name resolution", "getaddrinfo")


def kind(exc: BaseException) -> str:
    """auth / refused / timeout / protocol / dns / other, for choosing the fix sentence."""
    text = f"{type(exc).__name__} {exc}".lower()
    try:
        import redis

        if isinstance(exc, redis.AuthenticationError):
            return "auth"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    if any(s in text for s in _AUTH):
        return "auth"
    if (
        isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError, socket.timeout))
        or "timed out" in text
        or "timeout" in type(exc).__name__.lower()
    ):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError) or "refused" in text or "errno 111" in text:
        return "refused"
    if "protocol error" in text or "invalidresponse" in text or "unexpected frame" in text:
        return "protocol"
    if isinstance(exc, socket.gaierror) or any(s in text for s in _DNS):
        return "dns"
    return "other"


def what(failure: str, timeout: float) -> str:
    """A few words for a failure kind: ``connection refused``, ``no answer within 2 s``..."""
    return {
        "auth": "authentication failed",
        "refused": "connection refused",
        "timeout": f"no answer within {timeout:g} s",
        "dns": "host not found",
        "protocol": "something else answers there",
    }.get(failure, "unreachable")


def broker_fix(failure: str, broker: str, is_redis: bool = True) -> str:
    start = "redis-server, or docker compose -f compose.otel.yaml up -d redis" if is_redis else "e.g. RabbitMQ"
    example = "redis://:PASSWORD@host:6379/0" if is_redis else "amqp://user:PASSWORD@host:5672//"
    return {
        "auth": f"Put the broker's password in the broker URL ({example}, from the environment, e.g. "
        "AGENSIUM_BROKER_URL or the app's broker_url) and check the user's permissions.",
        "refused": f"Start the broker ({start}) or correct the host and port in the broker URL ({broker}).",
        "protocol": "Correct the port in the broker URL: what listens there is not the broker "
        f"({'Redis usually listens on 6379' if is_redis else 'AMQP usually on 5672'}).",
        "timeout": "Check that the host and port are the broker's and reachable from here (firewall, "
        "security group, Docker network), and that the broker is not frozen or overloaded.",
        "dns": "Correct the host name in the broker URL, or run doctor where that name resolves "
        "(inside the compose network the host is redis).",
    }.get(failure, "Check the broker URL and the broker's own logs.")

"""Keep secrets out of everything the package prints, logs or exports.

* :func:`redact_url`: a URL with its password masked, for showing where we connect;
* :func:`url_password`: the password a URL carries, to add to the secrets scrubbed;
* :func:`scrub`: text (an error message) with every URL password and known secret masked;
* :func:`describe`: one scrubbed line for an exception, safe to print, log or return.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@\s]*)@")


def redact_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``; other URLs unchanged."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        return "<unparseable url>"
    if parts.password is None and not parts.username:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if port:
        host = f"{host}:{port}"
    netloc = f"{user}:***@{host}" if parts.password is not None else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_password(url: str | None) -> str | None:
    """The (unquoted) password in ``url``; None when there is none or the URL does not parse."""
    if not url:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Mask the password of every URL in ``text`` and every known secret string."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "***")
    return text


def describe(exc: BaseException, secrets: Iterable[str | None] = (), limit: int = 300) -> str:
    """One line for an error, safe to print, log or return in a health body."""
    if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError)) and not str(exc):
        return "TimeoutError: no answer in time"
    text = f"{type(exc).__name__}: {scrub(str(exc), secrets)}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."

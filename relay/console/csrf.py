"""CSRF protection for every state-changing request.

Three layers, each enough on its own against a cross-site form: the session cookie is SameSite=Strict;
every POST must carry the session's token (a hidden ``csrf_token`` field, or the ``X-CSRF-Token``
header), compared in constant time; and a POST whose Origin (or Referer) names another site is refused.
The sign-in form, before there is a session, uses a double-submit token: a random value in a signed,
short-lived cookie that the form must repeat.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import Request

FIELD = "csrf_token"
HEADER = "x-csrf-token"


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin; True when it says nothing."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return not source
    parts = urlsplit(source)
    host = request.headers.get("host", "")
    return parts.netloc == host


def token_matches(expected: str, form_value: object, request: Request) -> bool:
    supplied = form_value if isinstance(form_value, str) and form_value else request.headers.get(HEADER, "")
    return bool(expected) and bool(supplied) and hmac.compare_digest(expected.encode(), supplied.encode())

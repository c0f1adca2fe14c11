"""Who is asking, and may they: bearer tokens with roles, the dashboard's login cookie, CSRF.

``BUCKETZIP_API_TOKENS`` lists ``ROLE:TOKEN`` pairs. A request authenticates with ``Authorization: Bearer
TOKEN`` (API clients, proxies, tests) or with the cookie the login form sets: ``<expiry>.<HMAC(token,
expiry)>``, HttpOnly and SameSite=Strict, which stops working when it expires or its token is removed from the
settings. Tokens are compared with ``hmac.compare_digest`` against every configured one, and never logged.

Roles grant permissions:

    submit   create jobs, and read a job by its id
    read     read everything (job lists, archives, the dashboard, metrics)
    admin    all of the above, and retry, cancel, retry all failed

With no tokens configured the server is open, and answers only on loopback (``app.py`` refuses other peers
and Host names, so a web page cannot reach it through DNS rebinding either).

CSRF: a state-changing request that is not authenticated by an Authorization header (which no other site can
make a browser send) and that comes from a browser (it carries the login cookie, an Origin or a Sec-Fetch-Site
header) must carry the CSRF token of its session, in the ``X-CSRF-Token`` header or the form's
``csrf_token`` field. The pages embed it; another site cannot read it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from ..config import Settings
from .problems import Problem

SESSION_COOKIE = "bucketzip_session"
CSRF_HEADER = "x-csrf-token"
PERMISSIONS = {
    "submit": frozenset({"submit", "job"}),
    "read": frozenset({"read", "job"}),
    "admin": frozenset({"submit", "read", "job", "admin"}),
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its role, how it authenticated (bearer, session, open) and its CSRF token."""

    role: str
    via: str
    csrf: str = ""

    def can(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class Auth:
    """The configured tokens, and how a request proves it holds one."""

    def __init__(self, settings: Settings, open_secret: Callable[[], bytes]) -> None:
        self.tokens = [(role, token.encode()) for role, token in settings.api_tokens]
        self.open = not self.tokens
        self.session_ttl = settings.api_session_ttl
        self._open_secret = open_secret  # the CSRF key when no tokens are configured (shared by all processes)

    def role_of(self, token: str) -> str | None:
        """The role of ``token``, comparing it with every configured token in constant time."""
        found = None
        supplied = token.encode()
        for role, known in self.tokens:
            if hmac.compare_digest(supplied, known):
                found = role
        return found

    def login(self, token: str, now: float | None = None) -> tuple[str, str] | None:
        """A session cookie value for ``token`` and its role, or None if it is no configured token."""
        expires = int((time.time() if now is None else now) + self.session_ttl)
        supplied = token.encode()
        for role, known in self.tokens:
            if hmac.compare_digest(supplied, known):
                return f"{expires}.{_mac(known, f'session:{expires}')}", role
        return None

    def session(self, value: str) -> Principal | None:
        expires, _, mac = value.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return None
        found = None
        for role, known in self.tokens:
            if hmac.compare_digest(mac.encode(), _mac(known, f"session:{expires}").encode()):
                found = Principal(role, "session", _mac(known, f"csrf:{expires}"))
        return found

    def authenticate(self, request: Request) -> Principal | None:
        """The caller, or None; raises 401 for an Authorization header that holds no valid token."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            role = self.role_of(token.strip()) if scheme.lower() == "bearer" and not self.open else None
            if role is None and not self.open:
                raise unauthorized("the bearer token is not valid")
            return Principal(role or "admin", "bearer")
        if self.open:
            return Principal("admin", "open", _mac(self._open_secret(), "csrf:open"))
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.session(cookie) if cookie else None

    def require(self, request: Request, permission: str, csrf: str | None = None) -> Principal:
        """The caller if it may do ``permission``; else 401 (not authenticated) or 403 (not allowed, or a
        state-changing browser request without its CSRF token). ``csrf`` is a form field's value, if any."""
        who = self.authenticate(request)
        if who is None:
            raise unauthorized("authentication required: an Authorization: Bearer token, or log in")
        if not who.can(permission):
            raise Problem(403, f"the {who.role} role may not do this (it needs {permission})", "forbidden")
        if request.method not in SAFE_METHODS and who.via != "bearer" and _from_browser(request, who):
            supplied = csrf if csrf is not None else request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(supplied.encode(), who.csrf.encode()):
                raise Problem(403, "the CSRF token is missing or wrong: reload the page and try again", "csrf")
        return who


def _from_browser(request: Request, who: Principal) -> bool:
    headers = request.headers
    return who.via == "session" or "origin" in headers or "sec-fetch-site" in headers


def unauthorized(detail: str) -> Problem:
    problem = Problem(401, detail, "unauthorized")
    problem.headers["WWW-Authenticate"] = 'Bearer realm="bucketzip"'
    return problem


def new_secret() -> str:
    return secrets.token_hex(32)

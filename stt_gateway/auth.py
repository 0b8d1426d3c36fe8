"""Who may call: API keys, short-lived scoped tokens, and what each may do (``docs/api.md``,
"Who may call").

Nothing here knows HTTP: :mod:`.web.credentials` finds the credential in a request and asks an
:class:`Authenticator` who it belongs to; handlers then ask :meth:`Principal.require` whether
that caller may do one thing to one session.

- A key is ``id:secret`` (``STT_GATEWAY_API_KEYS``). Its secret is compared in constant time
  (:func:`hmac.compare_digest`) against every configured key, so the time taken does not say
  which key came close. A key may do everything, mint tokens included.
- A token is a JWT (RFC 7519) signed with HS256 by ``STT_GATEWAY_TOKEN_SECRET`` (random per
  process when unset, so tokens die with the process). Decoding pins the algorithm
  (``algorithms=["HS256"]``: ``alg: none`` and algorithm switches fail) and requires ``exp``,
  ``iat`` and ``scope``; a small leeway absorbs clock skew. Claims: ``scope`` (space-separated,
  as RFC 8693), ``sid`` (the one session a ``session:*`` token is for), ``kid`` (the id of the
  key that minted it: limits and metrics count a token's use against that key).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, get_args

import jwt

from .errors import Forbidden, InvalidConfig, Unauthorized

Scope = Literal["sessions:create", "session:publish", "session:read"]
"""What a token may do: create sessions; feed, control and end one session; read one session."""
SCOPES: tuple[Scope, ...] = get_args(Scope)
ALGORITHM = "HS256"
LEEWAY_S = 5.0
"""Clock skew tolerated on ``exp``, ``iat`` and ``nbf`` (s)."""
VERIFIED_TOKENS = 4096
"""Verified tokens remembered (least recently used dropped first)."""


@dataclass(frozen=True)
class ApiKey:
    """One configured key: ``id`` is public (logs, metrics), ``secret`` never leaves."""

    id: str
    secret: str

    def __repr__(self) -> str:  # a key in a traceback or log shows its id only
        return f"ApiKey(id={self.id!r})"


def parse_keys(items: list[str]) -> list[ApiKey]:
    """``["ci:s3cret", …]`` → keys.

    Raises:
        ValueError: an item without ``:``, an empty id or secret, or an id given twice.
    """
    keys: list[ApiKey] = []
    for item in items:
        key_id, sep, secret = item.partition(":")
        if not sep or not key_id.strip() or not secret.strip():
            raise ValueError("write each key as id:secret (comma-separated)")
        if any(k.id == key_id.strip() for k in keys):
            raise ValueError(f"key id {key_id.strip()!r} is given twice")
        keys.append(ApiKey(key_id.strip(), secret.strip()))
    return keys


@dataclass(frozen=True)
class Principal:
    """Who a request comes from, once its credential checked out.

    Attributes:
        key_id: the key presented, or the key that minted the token presented; ``None`` when
            auth is off.
        is_key: a key itself (may do everything, mint tokens and read ``/metrics``).
        scopes: what a token allows (every scope for a key).
        session_id: the one session a token's ``session:*`` scopes are for (``None``: any).
    """

    key_id: str | None
    is_key: bool
    scopes: frozenset[str]
    session_id: str | None = None

    def allows(self, scope: Scope, session_id: str | None = None) -> bool:
        """Whether ``scope`` (on ``session_id``) is allowed."""
        return scope in self.scopes and (
            session_id is None
            or self.session_id is None
            or hmac.compare_digest(session_id, self.session_id)
        )

    def require_any(self, scopes: tuple[Scope, ...], session_id: str | None = None) -> None:
        """Allow one of ``scopes`` (on ``session_id``) or raise.

        Raises:
            Forbidden: ``forbidden`` — the credential is valid but not for this.
        """
        if not any(self.allows(scope, session_id) for scope in scopes):
            raise Forbidden("forbidden", "this credential does not allow that here")

    def as_minter(self) -> Principal:
        """This caller as the key that mints a new session's tokens: a ``sessions:create``
        token's session gets tokens counted against the key that minted it."""
        return Principal(key_id=self.key_id, is_key=True, scopes=frozenset(SCOPES))

    def require_key(self) -> None:
        """Allow only a key (or auth off).

        Raises:
            Forbidden: ``forbidden`` — a token.
        """
        if not self.is_key:
            raise Forbidden("forbidden", "this takes an API key, not a token")


OPEN = Principal(key_id=None, is_key=True, scopes=frozenset(SCOPES))
"""The caller when auth is off: may do everything."""


@dataclass(frozen=True)
class IssuedToken:
    """A minted token and what it allows (``POST /tokens``'s answer)."""

    access_token: str
    expires_in: int
    scope: list[Scope]
    session_id: str | None


class Authenticator:
    """Checks keys and tokens, and mints tokens.

    Args:
        keys: the configured keys (at least one: with none, auth is off and nothing is checked).
        token_secret: HS256 secret for tokens; ``None``: 32 random bytes, this process only.
        max_ttl_s: the longest token lifetime :meth:`mint` grants (s).
    """

    def __init__(self, keys: list[ApiKey], token_secret: str | None, max_ttl_s: int) -> None:
        if not keys:
            raise ValueError("an Authenticator needs at least one key")
        self._keys = keys
        self._secret = token_secret or secrets.token_urlsafe(32)
        self._max_ttl_s = max_ttl_s
        # Tokens already verified, with their expiry (Unix s): a client reconnecting with the
        # same token (EventSource does, every drop) skips the signature and claim checks.
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    @property
    def key_ids(self) -> list[str]:
        """The configured key ids (public)."""
        return [k.id for k in self._keys]

    def key(self, secret: str) -> Principal:
        """The key whose secret this is.

        Raises:
            Unauthorized: no key has it.
        """
        found: ApiKey | None = None
        given = secret.encode()
        for key in self._keys:  # all compared: the time does not depend on which matched
            if hmac.compare_digest(given, key.secret.encode()):
                found = key
        if found is None:
            raise Unauthorized()
        return Principal(key_id=found.id, is_key=True, scopes=frozenset(SCOPES))

    def token(self, token: str) -> Principal:
        """What a token allows.

        Raises:
            Unauthorized: malformed, badly signed, another algorithm, expired, not yet valid,
                or minted by a key no longer configured.
        """
        if (known := self._verified.get(token)) is not None:
            if known[1] + LEEWAY_S > time.time():
                self._verified.move_to_end(token)
                return known[0]
            del self._verified[token]
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "scope", "kid"]},
            )
        except jwt.PyJWTError:
            raise Unauthorized() from None
        if claims["iat"] > time.time() + LEEWAY_S:
            raise Unauthorized()  # issued in the future: not yet valid
        scopes = str(claims["scope"]).split()
        sid = claims.get("sid")
        if claims["kid"] not in self.key_ids or not set(scopes) <= set(SCOPES):
            raise Unauthorized()
        principal = Principal(
            key_id=str(claims["kid"]),
            is_key=False,
            scopes=frozenset(scopes),
            session_id=str(sid) if sid is not None else None,
        )
        self._verified[token] = (principal, float(claims["exp"]))
        if len(self._verified) > VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def mint(
        self, by: Principal, scopes: list[Scope], session_id: str | None, ttl_s: int
    ) -> IssuedToken:
        """A token for ``scopes`` (on ``session_id``) lasting ``ttl_s``, minted by key ``by``.

        Raises:
            Forbidden: ``by`` is a token, not a key.
            InvalidConfig: no scope, ``session:*`` without a session, or ``ttl_s`` out of
                1…``max_ttl_s``.
        """
        by.require_key()
        if not scopes:
            raise InvalidConfig("scope: name at least one of " + ", ".join(SCOPES))
        if session_id is None and any(s.startswith("session:") for s in scopes):
            raise InvalidConfig("session_id: session:publish and session:read name a session")
        if not 1 <= ttl_s <= self._max_ttl_s:
            raise InvalidConfig(f"ttl_s: between 1 and {self._max_ttl_s} s")
        now = int(time.time())
        claims: dict[str, object] = {
            "iat": now,
            "exp": now + ttl_s,
            "scope": " ".join(dict.fromkeys(scopes)),
            "kid": by.key_id,
        }
        if session_id is not None:
            claims["sid"] = session_id
        return IssuedToken(
            access_token=jwt.encode(claims, self._secret, algorithm=ALGORITHM),
            expires_in=ttl_s,
            scope=list(dict.fromkeys(scopes)),
            session_id=session_id,
        )

"""API keys: ``tq_<prefix>_<secret>``, stored as a hash, looked up by prefix.

    key = create_key(database_url, "alice", "laptop")   # printed once; only its hash is stored
    revoke_key(database_url, "3f9a0c1d2e4b")            # by prefix (or the whole key)
    user = await KeyStore(engine).authenticate(key)     # "alice", or None

The prefix (12 hex digits) is public: it is the row id in ``api_keys`` and names the
key in logs and in ``turnq keys revoke``.  The secret is 256 random bits, so a plain
SHA-256 is enough to make a stolen table useless (no dictionary to try, unlike a
password; a slow KDF such as scrypt would only add ~50 ms of CPU to every request).
The hash also covers the prefix, so a secret is bound to its row.  Comparison is
constant-time, and an unknown prefix is compared against a dummy hash so a missing
key and a wrong secret cost the same.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from shared.errors import InvalidInput
from shared.settings import get_settings
from shared.validation import check_id

KEY_PREFIX = "tq_"
_KEY = re.compile(r"^tq_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")
_PREFIX = re.compile(r"^(?:tq_)?([0-9a-f]{12})(?:_.*)?$")
_HASH_SCHEME = "sha256"
_DUMMY_HASH = f"{_HASH_SCHEME}${'0' * 64}"


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    user_id: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


def generate() -> tuple[str, str, str]:
    """A new key: (full key, prefix, stored hash)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}{prefix}_{secret}", prefix, hash_secret(prefix, secret)


def hash_secret(prefix: str, secret: str) -> str:
    digest = hashlib.sha256(f"{prefix}:{secret}".encode()).hexdigest()
    return f"{_HASH_SCHEME}${digest}"


def parse(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None (never touches the database)."""
    m = _KEY.fullmatch(key)
    return (m.group(1), m.group(2)) if m else None


def verify(prefix: str, secret: str, stored: str) -> bool:
    return hmac.compare_digest(hash_secret(prefix, secret), stored)


def prefix_of(key_or_prefix: str) -> str:
    m = _PREFIX.fullmatch(key_or_prefix.strip())
    if not m:
        raise ValueError("not a key prefix: expected 12 hex digits, e.g. 3f9a0c1d2e4b")
    return m.group(1)


# --------------------------------------------------------------------------- async (gateway)
SCOPES = frozenset({"approver"})  # approver: list and decide every user's pending approvals


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def authenticate(self, key: str) -> str | None:
        """The key's user id, or None for a malformed, unknown, wrong or revoked key."""
        found = await self.caller(key)
        return found[0] if found is not None else None

    async def caller(self, key: str) -> tuple[str, frozenset[str]] | None:
        """The key's (user id, scopes), or None for a malformed, unknown, wrong or revoked
        key."""
        parsed = parse(key)
        if parsed is None:
            # Malformed: nothing to look up.  Still hash once so no path is much cheaper.
            verify("0" * 12, "x", _DUMMY_HASH)
            return None
        prefix, secret = parsed
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT user_id, secret_hash, revoked_at, scopes FROM api_keys "
                        "WHERE id = :p"
                    ),
                    {"p": prefix},
                )
            ).first()
        stored = row[1] if row is not None else _DUMMY_HASH
        ok = verify(prefix, secret, stored)
        if row is None or not ok or row[2] is not None:
            return None
        return str(row[0]), frozenset(row[3] or ())


# --------------------------------------------------------------------------- sync (CLI, dev)
def _engine(database_url: str) -> Engine:
    url = database_url
    for scheme in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url[len(scheme) :]
    return create_sync_engine(url, poolclass=NullPool)


def create_key(
    database_url: str, user_id: str, name: str | None = None, scopes: Sequence[str] = ()
) -> str:
    """Create an API key for ``user_id`` and return it; it cannot be shown again.

    ``scopes``: ``approver`` lets the key list and decide every user's pending approvals
    of the deployment (a support desk), and nothing else of theirs."""
    check_id("user_id", user_id, get_settings().max_id_length)
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise InvalidInput("scope", f"unknown scope(s) {unknown}; known: {sorted(SCOPES)}")
    if name is not None and (len(name) > 200 or "\x00" in name):
        raise InvalidInput("name", "must be at most 200 characters, without NUL")
    key, prefix, hashed = generate()
    engine = _engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, user_id, secret_hash, name, scopes) "
                    "VALUES (:id, :u, :h, :n, :s)"
                ),
                {"id": prefix, "u": user_id, "h": hashed, "n": name, "s": sorted(set(scopes))},
            )
    finally:
        engine.dispose()
    return key


def revoke_key(database_url: str, key_or_prefix: str) -> bool:
    """Revoke a key by its prefix; False if there is no such live key."""
    prefix = prefix_of(key_or_prefix)
    engine = _engine(database_url)
    try:
        with engine.begin() as conn:
            result = conn.execute(
                text(
                    "UPDATE api_keys SET revoked_at = now() "
                    "WHERE id = :id AND revoked_at IS NULL RETURNING id"
                ),
                {"id": prefix},
            )
            return result.first() is not None
    finally:
        engine.dispose()


def list_keys(database_url: str, user_id: str | None = None) -> list[KeyInfo]:
    """Keys (never their secrets), newest first; all users' when ``user_id`` is None."""
    engine = _engine(database_url)
    sql = "SELECT id, user_id, name, created_at, revoked_at FROM api_keys"
    params: dict[str, str] = {}
    if user_id is not None:
        sql += " WHERE user_id = :u"
        params["u"] = user_id
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(sql + " ORDER BY created_at DESC"), params).all()
    finally:
        engine.dispose()
    return [KeyInfo(r[0], r[1], r[2], r[3], r[4]) for r in rows]

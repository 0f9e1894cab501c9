"""API keys for the app's OpenAI-compatible ``/v1`` routes: each signed-in user makes their own.

A key is ``alt-`` + 43 random URL-safe characters, shown once when it is made; the
database keeps only its SHA-256 (a random 256-bit key needs no slow hash) and its first
characters to tell keys apart. A key works while it is not revoked and its owner is active;
requests are attributed to the owner (the fairness cap in ``app/openai_api/`` counts per
owner). Besides these, the admin may set one key in the settings (``ALT_SERVE_API_KEY``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import text
from sqlmodel import select

from .db import ApiKey, get_engine, session_scope
from .users import UserInfo

PREFIX = "alt-"
MAX_KEYS_PER_USER = 20


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    created_at: str
    last_used_at: str
    revoked: bool


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def create_key(db: str, user: UserInfo, name: str = "") -> str:
    """A new key for ``user``; the plain key is returned once and never stored."""
    name = (name or "").strip()[:64]
    with session_scope(db) as s:
        live = s.exec(select(ApiKey.id).where(ApiKey.user_id == user.id, ApiKey.revoked == False)).all()  # noqa: E712
        if len(live) >= MAX_KEYS_PER_USER:
            raise ValueError(f"you already have {len(live)} keys (at most {MAX_KEYS_PER_USER}): revoke one first")
        key = PREFIX + secrets.token_urlsafe(32)
        s.add(ApiKey(user_id=user.id, name=name, prefix=key[:10], key_hash=_hash(key)))
    return key


def list_keys(db: str, user: UserInfo) -> list[KeyInfo]:
    with session_scope(db) as s:
        rows = s.exec(select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.id)).all()
        return [KeyInfo(id=r.id, name=r.name, prefix=r.prefix + "…",
                        created_at=r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "",
                        last_used_at=r.last_used_at.strftime("%Y-%m-%d %H:%M") if r.last_used_at else "",
                        revoked=r.revoked) for r in rows]


def revoke_key(db: str, user: UserInfo, key_id: int) -> None:
    """Revoke one of ``user``'s keys (an admin may revoke anyone's)."""
    with session_scope(db) as s:
        row = s.get(ApiKey, key_id) if isinstance(key_id, int) and 0 < key_id < 2**63 else None
        if row is None or (row.user_id != user.id and not user.is_admin):
            raise ValueError(f"no API key {key_id} of yours")
        row.revoked = True


_LOOKUP = text('SELECT k.id, u.id, u.name, u.role, u.active, k.last_used_at FROM apikey k '
               'JOIN "user" u ON u.id = k.user_id WHERE k.key_hash = :h AND k.revoked = :no')
_TOUCH_EVERY = dt.timedelta(minutes=1)  # last_used_at is a hint: no write transaction on every request


def user_for_key(db: str, key: str) -> UserInfo | None:
    """The active owner of a valid, unrevoked key, else None (and note when the key was last used)."""
    if not key or not key.startswith(PREFIX) or len(key) > 200:
        return None
    with get_engine(db).connect() as conn:
        row = conn.execute(_LOOKUP, {"h": _hash(key), "no": False}).first()
    if row is None or not row[4]:
        return None
    now = dt.datetime.now(dt.UTC)
    last = row[5]
    if isinstance(last, str):
        last = dt.datetime.fromisoformat(last)
    if last is None or now - (last if last.tzinfo else last.replace(tzinfo=dt.UTC)) > _TOUCH_EVERY:
        with get_engine(db).begin() as conn:
            conn.execute(text("UPDATE apikey SET last_used_at = :t WHERE id = :id"),
                         {"t": now.strftime("%Y-%m-%d %H:%M:%S.%f"), "id": row[0]})
    return UserInfo(id=row[1], name=row[2], role=row[3], active=True)

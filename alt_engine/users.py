"""Studio users: annotators and admins, with salted scrypt password hashes.

Passwords are never stored: ``hash_password`` keeps ``scrypt$n$r$p$salt$hash``
(base64) so the cost parameters travel with the hash and can be raised later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlmodel import select

from .db import User, get_engine, session_scope

ROLES = ("annotator", "admin")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_SCRYPT = dict(n=2**14, r=8, p=1)  # ~30-50 ms per hash on one core: slow enough to hurt guessing


@dataclass(frozen=True)
class UserInfo:
    """What the app needs to know about a signed-in user (no hash)."""

    id: int
    name: str
    role: str
    active: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def source(self) -> str:
        """Provenance string stored in ``Feedback.source``."""
        return f"human:{self.name}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a ``hash_password`` string."""
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _info(user: User) -> UserInfo:
    return UserInfo(id=user.id, name=user.name, role=user.role, active=user.active)


def validate(name: str, role: str, password: str) -> None:
    if not _NAME.match(name or ""):
        raise ValueError(f"invalid user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    if role not in ROLES:
        raise ValueError(f"invalid role {role!r}: one of {', '.join(ROLES)}")
    if len(password or "") < 8:
        raise ValueError("password too short: use at least 8 characters")


def add_user(db: str, name: str, password: str, role: str = "annotator") -> UserInfo:
    """Create a user; a taken name is an error (nothing changes)."""
    validate(name, role, password)
    with session_scope(db) as s:
        if s.exec(select(User).where(User.name == name)).first() is not None:
            raise ValueError(f"user {name!r} already exists")
        user = User(name=name, role=role, password_hash=hash_password(password))
        s.add(user)
        s.flush()
        return _info(user)


def set_password(db: str, name: str, password: str) -> None:
    if len(password or "") < 8:
        raise ValueError("password too short: use at least 8 characters")
    with session_scope(db) as s:
        user = s.exec(select(User).where(User.name == name)).first()
        if user is None:
            raise ValueError(f"no user {name!r}")
        user.password_hash = hash_password(password)


def set_active(db: str, name: str, active: bool) -> None:
    with session_scope(db) as s:
        user = s.exec(select(User).where(User.name == name)).first()
        if user is None:
            raise ValueError(f"no user {name!r}")
        user.active = active


def list_users(db: str) -> list[UserInfo]:
    with session_scope(db) as s:
        return [_info(u) for u in s.exec(select(User).order_by(User.id))]


_BY_NAME = text('SELECT id, name, role, active FROM "user" WHERE name = :name')


def get_user(db: str, name: str) -> UserInfo | None:
    """Looked up on every web request, so plain SQL (the ORM would cost more than the query)."""
    with get_engine(db).connect() as conn:
        row = conn.execute(_BY_NAME, {"name": name}).first()
    return UserInfo(id=row[0], name=row[1], role=row[2], active=bool(row[3])) if row else None


def authenticate(db: str, name: str, password: str) -> UserInfo | None:
    """The active user with this name and password, else None (same cost either way)."""
    with session_scope(db) as s:
        user = s.exec(select(User).where(User.name == (name or ""))).first()
        stored = user.password_hash if user else hash_password("x" * 8)  # equalise timing for unknown names
    if not verify_password(password or "", stored) or user is None or not user.active:
        return None
    return _info(user)

"""Studio users: annotators and admins, with salted scrypt password hashes; sessions; sign-in throttling.

Passwords are never stored: ``hash_password`` keeps ``scrypt$n$r$p$salt$hash``
(base64) so the cost parameters travel with the hash and can be raised later.

Sessions: every session cookie carries the user's ``session_gen``; bumping it
(``revoke_sessions``: sign-out, a new password, deactivation) ends them all at once.

Throttling (``begin_sign_in`` / ``end_sign_in``), state in the database so every app
process shares it: an attempt is counted *before* its password hash is checked, per
client address and per user name, so a burst of concurrent guesses is cut off at the
limit. Past the limit a key is locked, each further failure doubling the lock
(backoff). A locked *name* only refuses addresses that have themselves been failing:
strangers cannot lock the real user out, while each fresh address gets one guess per
lock before its own failure shuts it out too.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import threading
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from .db import HUMAN_PREFIX, ApiKey, AppSecret, SignInThrottle, User, get_engine, insert_ignore, session_scope

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
    session_gen: int = 0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def source(self) -> str:
        """Provenance string stored in ``Feedback.source``."""
        return f"{HUMAN_PREFIX}{self.name}"


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
    return UserInfo(id=user.id, name=user.name, role=user.role, active=user.active, session_gen=user.session_gen)


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


def set_password(db: str, name: str, password: str) -> int:
    """A new password ends everything the old one opened: every session, every API key (``/v1``), and clears the
    name's sign-in lock (an admin's way to let a locked-out user in). Returns how many keys were revoked."""
    if len(password or "") < 8:
        raise ValueError("password too short: use at least 8 characters")
    with session_scope(db) as s:
        user = s.exec(select(User).where(User.name == name)).first()
        if user is None:
            raise ValueError(f"no user {name!r}")
        user.password_hash = hash_password(password)
        user.session_gen += 1  # whoever had the old password is signed out
        keys = s.exec(select(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked == False)).all()  # noqa: E712
        for key in keys:
            key.revoked = True
        lock = s.get(SignInThrottle, _name_key(name))
        if lock is not None:
            s.delete(lock)
        return len(keys)


def set_active(db: str, name: str, active: bool) -> None:
    with session_scope(db) as s:
        user = s.exec(select(User).where(User.name == name)).first()
        if user is None:
            raise ValueError(f"no user {name!r}")
        if user.active and not active:
            user.session_gen += 1
        user.active = active


def revoke_sessions(db: str, user_id: int) -> None:
    """End every session of this user (sign-out): their cookies carry the old generation."""
    with get_engine(db).begin() as conn:
        conn.execute(text('UPDATE "user" SET session_gen = session_gen + 1 WHERE id = :id'), {"id": user_id})


def list_users(db: str) -> list[UserInfo]:
    with session_scope(db) as s:
        return [_info(u) for u in s.exec(select(User).order_by(User.id))]


_BY_NAME = text('SELECT id, name, role, active, session_gen FROM "user" WHERE name = :name')


def get_user(db: str, name: str) -> UserInfo | None:
    """Looked up on every web request, so plain SQL (the ORM would cost more than the query)."""
    with get_engine(db).connect() as conn:
        row = conn.execute(_BY_NAME, {"name": name}).first()
    return UserInfo(id=row[0], name=row[1], role=row[2], active=bool(row[3]), session_gen=row[4] or 0) if row else None


def authenticate(db: str, name: str, password: str) -> UserInfo | None:
    """The active user with this name and password, else None (same cost either way)."""
    with session_scope(db) as s:
        user = s.exec(select(User).where(User.name == (name or ""))).first()
        stored = user.password_hash if user else hash_password("x" * 8)  # equalise timing for unknown names
    if not verify_password(password or "", stored) or user is None or not user.active:
        return None
    return _info(user)


# --------------------------------------------------------------------------- sign-in throttling

NAME_LIMIT, ADDR_LIMIT = 5, 20  # failures before a user name / a client address is locked
WINDOW = dt.timedelta(minutes=15)  # failures older than this (and not locked) are forgotten
FIRST_LOCK, MAX_LOCK = 60.0, 3600.0  # seconds: the first lock, doubled per further failure, capped
ADDR_PENDING = 64  # sign-ins one address may have in flight at once (a team behind one NAT address fits)
PENDING_WAIT = 1.0  # seconds to wait when too many are in flight
PENDING_STALE = dt.timedelta(minutes=2)  # an attempt whose process died never ends: forget it after this
_throttle_lock = threading.Lock()  # this process's threads queue here instead of in SQLite's busy handler


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    return t.replace(tzinfo=dt.UTC) if t is not None and t.tzinfo is None else t


def _lock_seconds(failures: int, limit: int) -> float:
    return 0.0 if failures < limit else min(MAX_LOCK, FIRST_LOCK * 2 ** (failures - limit))


def _throttle_row(s, key: str, now: dt.datetime) -> SignInThrottle:
    # several app processes may create the same row at once: insert-or-nothing, then lock it (PostgreSQL)
    insert_ignore(s, SignInThrottle, key=key, failures=0, window_start=now)
    row = s.get(SignInThrottle, key, with_for_update=True)
    locked = _utc(row.locked_until)
    if (locked is None or locked <= now) and now - _utc(row.window_start) > WINDOW:
        row.failures, row.window_start, row.locked_until = 0, now, None  # an old, unlocked count is forgotten
    if row.pending and (row.pending_at is None or now - _utc(row.pending_at) > PENDING_STALE):
        row.pending = 0
    return row


def _wait(row: SignInThrottle, now: dt.datetime) -> float:
    locked = _utc(row.locked_until)
    return (locked - now).total_seconds() if locked is not None and locked > now else 0.0


def _name_key(name: str) -> str:
    return f"name:{(name or '').lower()[:128]}"


def begin_sign_in(db: str, name: str, addr: str) -> float:
    """Admit a sign-in attempt before its password is checked: 0.0 = go on (then call ``end_sign_in``), else the
    seconds to wait (refused, nothing counted).

    A locked name refuses every address (a fresh address gets no guess at it). A name takes at most
    ``NAME_LIMIT - failures`` checks at once (one once a lock ran out), so a burst of guesses is bounded too.
    An attempt counts as failed only once its password has failed: colleagues signing in at once behind one
    address are not refused.
    """
    now = dt.datetime.now(dt.UTC)
    with _throttle_lock, session_scope(db) as s:
        s.connection().execute(text("UPDATE signinthrottle SET failures = failures WHERE 1 = 0"))  # write lock first
        a = _throttle_row(s, f"addr:{addr}", now)
        n = _throttle_row(s, _name_key(name), now)
        wait = max(_wait(a, now), _wait(n, now))
        if not wait and n.pending >= max(1, NAME_LIMIT - n.failures):
            wait = PENDING_WAIT  # as many checks at this name in flight as it has guesses left (one after a lock)
        if not wait and a.pending >= ADDR_PENDING:
            wait = PENDING_WAIT
        if wait:
            return wait
        for row in (a, n):
            row.pending += 1
            row.pending_at = now
        return 0.0


def end_sign_in(db: str, name: str, addr: str, ok: bool | None) -> None:
    """After the password check: a failure counts (and may lock the name and the address), a success clears the
    name's failures; ``None`` (the check itself failed) only ends the attempt."""
    now = dt.datetime.now(dt.UTC)
    with _throttle_lock, session_scope(db) as s:
        s.connection().execute(text("UPDATE signinthrottle SET failures = failures WHERE 1 = 0"))
        for key, limit in ((f"addr:{addr}", ADDR_LIMIT), (_name_key(name), NAME_LIMIT)):
            row = s.get(SignInThrottle, key)
            if row is None:
                continue
            row.pending = max(0, row.pending - 1)
            if ok is False:
                row.failures += 1
                if (lock := _lock_seconds(row.failures, limit)) > 0:
                    row.locked_until = now + dt.timedelta(seconds=lock)
            elif ok and key.startswith("name:"):
                row.failures, row.locked_until = 0, None


def shared_secret(db: str, name: str) -> str:
    """A random secret stored once in the database, so every app process (and a restart) uses the same one."""
    with session_scope(db) as s:
        row = s.get(AppSecret, name)
        if row is not None:
            return row.value
    try:
        with session_scope(db) as s:
            s.add(AppSecret(name=name, value=secrets.token_hex(32)))
    except IntegrityError:  # another process stored it first
        pass
    with session_scope(db) as s:
        return s.get(AppSecret, name).value

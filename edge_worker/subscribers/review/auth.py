"""Users and sessions of the review pages: argon2 password hashes, server-side sessions that
expire (the token is kept only as its sha256), a CSRF token per session checked in constant
time, role checks per operation, and an opt-in trust of a reverse proxy's user header.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edge_worker.subscribers.review import db
from edge_worker.subscribers.review.errors import AuthError, NotAllowed
from edge_worker.subscribers.review.store import ROLES, ReviewStore, _utc

USER_ROLES = ("tier1", "tier2", "admin")
DEFAULT_SESSION_S = 8 * 3600


@dataclass(frozen=True)
class User:
    name: str
    role: str


@dataclass(frozen=True)
class Session:
    """A login: ``token`` goes in the cookie (only its hash is stored), ``csrf`` in each form."""

    token: str
    csrf: str
    user: User
    expires_at: datetime


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def may(user: User, operation: str) -> bool:
    """Whether ``user``'s role allows ``operation`` (a key of :data:`store.ROLES`)."""
    return user.role in ROLES[operation]


def require(user: User, operation: str) -> None:
    """Raise :class:`NotAllowed` unless ``user`` may do ``operation``."""
    if not may(user, operation):
        raise NotAllowed(f"{user.name} ({user.role}) may not {operation.replace('_', ' ')}")


def csrf_ok(session: Session, submitted: str | None) -> bool:
    """Constant-time comparison of a submitted CSRF token with the session's."""
    return submitted is not None and hmac.compare_digest(session.csrf.encode(), submitted.encode())


class Accounts:
    """Users and sessions in the review store's database.

    ``proxy_header``: the name of a header a trusted reverse proxy sets to the authenticated
    user (e.g. ``X-Remote-User``); ``None`` (the default) trusts no header.
    """

    def __init__(self, store: ReviewStore, *, session_s: int = DEFAULT_SESSION_S,
                 proxy_header: str | None = None, hasher: PasswordHasher | None = None) -> None:  # fmt: skip
        self.store = store
        self.session_s = session_s
        self.proxy_header = proxy_header
        self.hasher = hasher or PasswordHasher()

    def create_user(self, actor: str, name: str, role: str, password: str, *, operator: bool = False) -> User:
        """Add a user (audited).  ``actor`` must be an admin, unless there is no user yet or
        ``operator`` says the actor is the machine's operator (``edge-worker review adduser``,
        who holds the database itself).  Raises ValueError for a bad role, NotAllowed, and
        AuthError when the name is taken."""
        if role not in USER_ROLES:
            raise ValueError(f"role must be one of {USER_ROLES}, not {role!r}")
        if not name or len(name) > 100 or any(c.isspace() for c in name):
            raise ValueError(f"user name {name!r}: 1 to 100 characters, no spaces")
        if self.user(name) is not None:
            raise AuthError(f"user {name!r} exists already")
        hashed = self.hasher.hash(password)

        def run(conn: sa.Connection) -> None:
            first = conn.execute(sa.select(sa.func.count()).select_from(db.users)).scalar_one() == 0
            if not first and not operator:
                row = conn.execute(sa.select(db.users.c.role).where(db.users.c.name == actor)).first()
                if row is None or row.role != "admin":
                    self.store.audit(conn, actor, "create_user", None, "refused:not_allowed", {"name": name}, None)
                    return
            conn.execute(sa.insert(db.users).values(name=name, role=role, password_hash=hashed,
                                                    created_at=self.store.now(), disabled=False))  # fmt: skip
            detail = {"name": name, "role": role, "via": "command line" if operator else "pages"}
            self.store.audit(conn, actor, "create_user", None, "done", detail, None)

        self.store.transaction(run)
        user = self.user(name)
        if user is None or user.role != role:
            raise NotAllowed(f"{actor!r} may not create users")
        return user

    def user(self, name: str) -> User | None:
        row = self.store.transaction(lambda c: c.execute(
            sa.select(db.users).where(db.users.c.name == name, db.users.c.disabled.is_(False))
        ).first())  # fmt: skip
        return None if row is None else User(row.name, row.role)

    def login(self, name: str, password: str) -> Session:
        """Check the password (rehashing it when the hasher's parameters changed) and open a
        session.  Raises :class:`AuthError`."""
        row = self.store.transaction(lambda c: c.execute(
            sa.select(db.users).where(db.users.c.name == name, db.users.c.disabled.is_(False))
        ).first())  # fmt: skip
        try:
            if row is None:
                raise VerificationError("unknown user")
            self.hasher.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError) as exc:
            raise AuthError("wrong user name or password") from exc
        rehash = self.hasher.check_needs_rehash(row.password_hash)
        new_hash = self.hasher.hash(password) if rehash else None
        return self._open(User(row.name, row.role), {"rehashed": rehash}, new_hash)

    def login_from_proxy(self, headers: Mapping[str, str]) -> Session | None:
        """A session for the user a trusted proxy names (see :meth:`from_proxy`), or ``None``."""
        user = self.from_proxy(headers)
        return None if user is None else self._open(user, {"via": "proxy", "header": self.proxy_header})

    def _open(self, user: User, detail: dict[str, object], new_hash: str | None = None) -> Session:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self.store.now()
        expires = now + timedelta(seconds=self.session_s)

        def run(conn: sa.Connection) -> None:
            if new_hash is not None:
                conn.execute(sa.update(db.users).where(db.users.c.name == user.name).values(password_hash=new_hash))
            conn.execute(sa.insert(db.sessions).values(token_hash=_hash_token(token), user_name=user.name,
                                                       created_at=now, expires_at=expires, csrf_token=csrf))  # fmt: skip
            self.store.audit(conn, user.name, "login", None, "done", detail, None)

        self.store.transaction(run)
        return Session(token, csrf, user, expires)

    def session(self, token: str) -> Session:
        """The live session of ``token``; raises :class:`AuthError` when unknown or expired."""
        digest = _hash_token(token)
        row = self.store.transaction(lambda c: c.execute(
            sa.select(db.sessions, db.users.c.role).join(db.users)
            .where(db.sessions.c.token_hash == digest, db.users.c.disabled.is_(False))
        ).first())  # fmt: skip
        if row is None:
            raise AuthError("no such session")
        if _utc(row.expires_at) <= self.store.now():
            self.logout(token)
            raise AuthError("session expired")
        return Session(token, row.csrf_token, User(row.user_name, row.role), _utc(row.expires_at))

    def logout(self, token: str) -> None:
        """End a session (no error when it is already gone)."""
        digest = _hash_token(token)
        self.store.transaction(lambda c: c.execute(sa.delete(db.sessions).where(db.sessions.c.token_hash == digest)))

    def from_proxy(self, headers: Mapping[str, str]) -> User | None:
        """The user a trusted proxy names, when ``proxy_header`` is set and the user exists."""
        if self.proxy_header is None:
            return None
        wanted = self.proxy_header.lower()
        for key, value in headers.items():
            if key.lower() == wanted and value:
                return self.user(value.strip())
        return None

"""Users, sessions, CSRF and roles of the review store, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("argon2")
pytest.importorskip("sqlalchemy")

from argon2 import PasswordHasher

from edge_worker.subscribers.review.auth import Accounts, csrf_ok, may, require
from edge_worker.subscribers.review.errors import AuthError, NotAllowed
from edge_worker.subscribers.review.store import ReviewStore
from tests.review_db import postgres_server, review_url  # noqa: F401

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(review_url: str) -> Any:  # noqa: F811
    clock = Clock()
    store = ReviewStore(review_url, clock=clock)
    accounts = Accounts(store, session_s=60, hasher=FAST)
    accounts.create_user("setup", "root", "admin", "root-pw")
    yield store, accounts, clock
    store.close()


def test_login_session_expiry_and_logout(env: Any) -> None:
    _store, accounts, clock = env
    accounts.create_user("root", "ann", "tier1", "s3cret")
    with pytest.raises(AuthError):
        accounts.login("ann", "wrong")
    s = accounts.login("ann", "s3cret")
    assert accounts.session(s.token).user.role == "tier1"
    assert csrf_ok(s, s.csrf) and not csrf_ok(s, "x") and not csrf_ok(s, None)
    clock.t += 61
    with pytest.raises(AuthError, match="expired"):
        accounts.session(s.token)
    s2 = accounts.login("ann", "s3cret")
    accounts.logout(s2.token)
    with pytest.raises(AuthError):
        accounts.session(s2.token)


def test_token_is_stored_hashed_and_password_argon2(env: Any) -> None:
    import sqlalchemy as sa

    from edge_worker.subscribers.review import db

    store, accounts, _ = env
    s = accounts.login("root", "root-pw")
    with store.engine.connect() as c:
        hashes = [r.token_hash for r in c.execute(sa.select(db.sessions))]
        pw = c.execute(sa.select(db.users.c.password_hash)).scalar_one()
    assert s.token not in hashes and len(hashes[0]) == 64
    assert pw.startswith("$argon2id$")


def test_rehash_when_parameters_change(env: Any) -> None:
    store, _accounts, _ = env
    stronger = Accounts(store, hasher=PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    stronger.login("root", "root-pw")
    import sqlalchemy as sa

    from edge_worker.subscribers.review import db

    with store.engine.connect() as c:
        pw = c.execute(sa.select(db.users.c.password_hash)).scalar_one()
    assert "t=2" in pw and not stronger.hasher.check_needs_rehash(pw)


def test_only_admins_create_users_and_roles(env: Any) -> None:
    _, accounts, _ = env
    ann = accounts.create_user("root", "ann", "tier1", "pw")
    with pytest.raises(NotAllowed):
        accounts.create_user("ann", "eve", "admin", "pw")
    assert may(ann, "tier_one") and not may(ann, "tier_two")
    with pytest.raises(NotAllowed):
        require(ann, "manage_users")


def test_proxy_header_off_by_default(env: Any) -> None:
    store, accounts, _ = env
    assert accounts.from_proxy({"X-Remote-User": "root"}) is None
    trusting = Accounts(store, proxy_header="X-Remote-User", hasher=FAST)
    user = trusting.from_proxy({"x-remote-user": "root"})
    assert user is not None and user.role == "admin"
    assert trusting.from_proxy({"X-Remote-User": "nobody"}) is None

"""Wires the review parts for the dashboard from its config file: store, accounts, copies,
recorder and pages.  The one place that knows how they fit; nothing else builds them.

The copy store (``review.copies``) is optional: a build without it serves every page and says
"no review copy" on each image.  With ``[review] rejections = true`` the store writes rejection
commands and a :class:`RejectionSender` publishes them as ``[review] mqtt_username``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher

from edge_worker.errors import ConfigError
from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.dashboard.config import DashboardConfig
from edge_worker.subscribers.dashboard.recorder import Recorder
from edge_worker.subscribers.dashboard.rejection_sender import RejectionSender
from edge_worker.subscribers.dashboard.review_site import ReviewSite
from edge_worker.subscribers.review.auth import Accounts
from edge_worker.subscribers.review.rejections import Rejections, RejectPolicy
from edge_worker.subscribers.review.store import ReviewStore

log = logging.getLogger(__name__)


def _copies(store: ReviewStore, config: DashboardConfig) -> Any | None:
    try:
        module = importlib.import_module("edge_worker.subscribers.review.copies")
    except ImportError as exc:
        log.warning("review: no copy store in this build (%s): images show 'no review copy'", exc)
        return None
    r = config.review
    return module.ReviewCopies(store, max_age_days=r.copies_max_age_days, max_bytes=r.copies_max_bytes)


@dataclass
class ReviewParts:
    """What the dashboard needs of the review side; :meth:`close` after the dashboard stopped."""

    store: ReviewStore
    accounts: Accounts
    site: ReviewSite
    recorder: Recorder
    copies: Any | None
    rejections: Rejections | None = None
    sender: RejectionSender | None = None

    def offer(self, kind: str, payload: bytes) -> None:
        """A message from the feed: a ``verdict`` or a ``review-copy`` (never blocks)."""
        self.recorder.offer(kind, payload)

    def start(self) -> None:
        self.recorder.start()
        if self.sender is not None:
            self.sender.start()

    def stop(self) -> None:
        if self.sender is not None:
            self.sender.stop()
        self.recorder.stop()

    def close(self) -> None:
        self.store.close()

    def metrics(self) -> str:
        """The recorder's gauges, Prometheus text."""
        r = self.recorder
        return ("# HELP review_recorder_pending Received messages not yet written to the review database.\n"
                f"# TYPE review_recorder_pending gauge\nreview_recorder_pending {r.pending}\n"
                "# HELP review_recorder_dropped Received messages that could not be recorded.\n"
                f"# TYPE review_recorder_dropped counter\nreview_recorder_dropped {r.dropped}\n"
                + (self.sender.metrics() if self.sender is not None else ""))  # fmt: skip


def sender_settings(config: DashboardConfig, settings: MqttSettings) -> MqttSettings:
    """The dashboard's broker settings with the review user (its own name, password, client id)."""
    return dataclasses.replace(settings, username=config.review.mqtt_username,
                               password=config.mqtt_password(), client_id="")  # fmt: skip


def open_review(config: DashboardConfig, *, clock: Callable[[], float] = time.time,
                hasher: PasswordHasher | None = None, retry_s: float = 2.0,
                settings: MqttSettings | None = None, prefix: str = "xray") -> ReviewParts:  # fmt: skip
    """Open the store (upgrading it; StoreUnavailable when unreachable) and build the parts.

    ``settings``: the dashboard's broker; with ``[review] rejections`` the sender needs it
    (ConfigError without it, or when the review user's password file cannot be read).
    """
    r = config.review
    if config.database_url.startswith("sqlite:///"):
        config.state.folder.mkdir(parents=True, exist_ok=True)
    policy = None
    if r.rejections:
        if settings is None:
            raise ConfigError("[review] rejections needs the broker (the dashboard's --broker)")
        policy = RejectPolicy(after=r.reject_after, retry_s=r.reject_retry_s, retry_max_s=r.reject_retry_max_s)  # type: ignore[arg-type]
        mqtt = sender_settings(config, settings)
    store = ReviewStore(config.database_url, clock=clock, rejections=policy)
    accounts = Accounts(store, session_s=r.session_s, proxy_header=r.proxy_user_header or None, hasher=hasher)
    copies = _copies(store, config)
    recorder = Recorder(store, copies, retry_s=retry_s)
    site = ReviewSite(store, accounts, public_board=r.public_board, secure_cookie=r.secure_cookie,
                      window=r.agreement_window, level=r.agreement_alert_below, copies=copies)  # fmt: skip
    parts = ReviewParts(store, accounts, site, recorder, copies)
    if policy is not None:
        parts.rejections = Rejections(store, policy)
        parts.sender = RejectionSender(parts.rejections, mqtt, prefix)
        site.rejections = parts.rejections
        site.on_change = parts.sender.wake
    site.extra_metrics = parts.metrics
    return parts

"""The dashboard's own TOML file: ``edge-worker dashboard --config FILE``.

Without ``--config`` the dashboard is the live board alone, open to anyone who can reach it
(as before).  With a file, the review pages are on unless ``[review] enabled = false``, and
viewing the board needs a sign-in unless ``public_board = true``.  Every key is optional;
unknown keys are refused with their line number::

    [state]
    folder = "/var/lib/edge-worker-dashboard"  # relative paths: from the file's own folder

    [review]
    enabled = true                # the review pages, /metrics, verdicts recorded in the store
    database = ""                 # SQLAlchemy URL; "" = sqlite:///<state folder>/review.sqlite3
                                  # (PostgreSQL: "postgresql+psycopg://user@host:5432/review")
    session_minutes = 480         # a sign-in lasts this long
    public_board = false          # true: the board (/, /events, /api/stations) without sign-in
    proxy_user_header = ""        # e.g. "X-Remote-User": trust a reverse proxy's user; "" = off
    secure_cookie = false         # true behind a TLS-terminating proxy: the cookie gets Secure
    agreement_window = 100        # the recent window: the last N reviews of each tier
    agreement_alert_below = 0.8   # alert when the window's agreement is under this
    copies_max_age_days = 30.0    # review copies (images) older than this are pruned
    copies_max_mb = 2048.0        # and the oldest beyond this total
    rejections = false            # true: confirmed retakes become reject commands to the worker
                                  # (<prefix>/<site>/<station>/reject; docs/review.md)
    reject_after = "tier_two"     # or "tier_one": tier one's "Confirm retake" also sends one
    mqtt_username = ""            # the broker user the commands are published as ("review")
    mqtt_password_file = ""       # its password (or $CREDENTIALS_DIRECTORY/review-mqtt-password)
    reject_retry_s = 30.0         # an unanswered command is published again after this,
    reject_retry_max_s = 3600.0   # doubling up to this

A database password goes in the URL read from ``$CREDENTIALS_DIRECTORY/review-database-url``
(systemd ``LoadCredential=``) when that file exists, never in this file; so does the broker
password of ``mqtt_username`` (``review-mqtt-password``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edge_worker.errors import ConfigError

# The daemon's strict TOML builder (unknown keys refused, types checked, line numbers found):
# one implementation for both files.
from edge_worker.service.config import _build, _FieldError, _line_of

DEFAULT_STATE = Path("/var/lib/edge-worker-dashboard")
CREDENTIAL = "review-database-url"
MQTT_CREDENTIAL = "review-mqtt-password"


@dataclass(frozen=True)
class StateSection:
    """Where the dashboard keeps its files (the default review database)."""

    folder: Path = DEFAULT_STATE


@dataclass(frozen=True)
class ReviewSection:
    """The ``[review]`` table; see the module docstring for each key."""

    enabled: bool = True
    database: str = ""
    session_minutes: float = 480.0
    public_board: bool = False
    proxy_user_header: str = ""
    secure_cookie: bool = False
    agreement_window: int = 100
    agreement_alert_below: float = 0.8
    copies_max_age_days: float = 30.0
    copies_max_mb: float = 2048.0
    rejections: bool = False
    reject_after: str = "tier_two"
    mqtt_username: str = ""
    mqtt_password_file: str = ""
    reject_retry_s: float = 30.0
    reject_retry_max_s: float = 3600.0

    @property
    def copies_max_bytes(self) -> int:
        return int(self.copies_max_mb * 1024 * 1024)

    @property
    def session_s(self) -> int:
        return int(self.session_minutes * 60)


@dataclass(frozen=True)
class DashboardConfig:
    """The whole file.  :attr:`database_url` resolves the default and the credential."""

    state: StateSection = field(default_factory=StateSection)
    review: ReviewSection = field(default_factory=ReviewSection)

    @property
    def database_url(self) -> str:
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / CREDENTIAL).is_file():
            return (Path(credentials) / CREDENTIAL).read_text(encoding="utf-8").strip()
        return self.review.database or f"sqlite:///{self.state.folder / 'review.sqlite3'}"

    def mqtt_password(self) -> str | None:
        """The review broker user's password: the credential, else ``mqtt_password_file``, else None.

        Raises ConfigError when the named file cannot be read."""
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        path = Path(credentials) / MQTT_CREDENTIAL if credentials else None
        if path is None or not path.is_file():
            if not self.review.mqtt_password_file:
                return None
            path = Path(self.review.mqtt_password_file)
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the review broker password {path}: {exc}") from exc


def _validate(config: DashboardConfig) -> list[tuple[str, str]]:
    r = config.review
    problems = []
    if not 1 <= r.session_minutes <= 7 * 24 * 60:
        problems.append(("review.session_minutes", "must be between 1 and 10080 (a week)"))
    if not 1 <= r.agreement_window <= 100_000:
        problems.append(("review.agreement_window", "must be between 1 and 100000"))
    if not 0.0 <= r.agreement_alert_below <= 1.0:
        problems.append(("review.agreement_alert_below", "must be between 0 and 1"))
    if not r.copies_max_age_days > 0:
        problems.append(("review.copies_max_age_days", "must be more than 0"))
    if not r.copies_max_mb > 0:
        problems.append(("review.copies_max_mb", "must be more than 0"))
    if r.reject_after not in ("tier_two", "tier_one"):
        problems.append(("review.reject_after", 'must be "tier_two" or "tier_one"'))
    if r.rejections and not r.mqtt_username:
        problems.append(("review.rejections", "needs mqtt_username (the broker user the commands are published as)"))
    if not 0 < r.reject_retry_s <= r.reject_retry_max_s:
        problems.append(("review.reject_retry_s", "must be more than 0 and at most reject_retry_max_s"))
    if r.proxy_user_header and not r.proxy_user_header.replace("-", "").isalnum():
        problems.append(("review.proxy_user_header", "must be a header name (letters, digits, -)"))
    return problems


def parse(text: str, source: str = "<dashboard config>", base: Path | None = None) -> DashboardConfig:
    """Parse the TOML text; relative folders are taken from ``base``.  ConfigError names the line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        config: DashboardConfig = _build(DashboardConfig, raw, "")
    except _FieldError as exc:
        line = _line_of(text, exc.dotted)
        raise ConfigError(f"{source}:{line}: {exc}" if line else f"{source}: {exc}") from exc
    for key, message in _validate(config):
        line = _line_of(text, key)
        raise ConfigError(f"{source}:{line}: {key} {message}" if line else f"{source}: {key} {message}")
    if base is not None and not config.state.folder.is_absolute():
        config = dataclasses.replace(config, state=StateSection(base / config.state.folder))
    return config


def load(path: Path) -> DashboardConfig:
    """Read and validate the dashboard's TOML file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read dashboard config {path}: {exc}") from exc
    return parse(text, str(path), base=Path(path).resolve().parent)

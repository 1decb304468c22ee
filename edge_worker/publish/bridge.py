"""Site-to-centre bridges: the mosquitto bridge section of a site broker, and the centre's ACL.

Each site's own broker (the one its stations publish to) carries ``<prefix>/<site>/#`` to a
central broker with mosquitto's bridge: one outgoing topic pattern, a persistent session
(``cleansession false``) so QoS 1 messages queue at the site while the link is down, TLS and
per-site credentials, and on the centre an ACL that lets the site's bridge user write only
below its own prefix.  This module only renders text from a site's :class:`~edge_worker.service.config.Config`;
it opens no connection and the ``edge-worker bridge-config`` command writes the files.

The bridge user is ``bridge-<site>`` unless a user is given in the centre URL
(``mqtts://user@centre:8883``); the centre's password file needs that user
(``mosquitto_passwd /etc/mosquitto/passwd bridge-<site>``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edge_worker.errors import ConfigError
from edge_worker.publish.settings import MqttSettings, Topics
from edge_worker.service.config import Config

#: Where the site broker finds the centre's CA and its own client certificate, by default.
DEFAULT_CAFILE = "/etc/mosquitto/certs/centre-ca.crt"
#: QoS 1 messages a site broker keeps per client (the bridge is one) while the centre is away:
#: a day of a busy site's verdicts, errors and status refreshes, far above a minute's outage.
DEFAULT_MAX_QUEUED = 100_000
PROTOCOLS = {"5": "mqttv50", "3.1.1": "mqttv311"}


@dataclass(frozen=True)
class SiteBridge:
    """What one site's bridge needs: the site's topics, the centre's address and credentials.

    ``cafile`` verifies the centre's certificate; ``certfile``/``keyfile`` (both or neither) are
    the site broker's client certificate; ``password`` is the bridge user's password on the
    centre (``None``: certificate authentication only).  ``restart_timeout`` is mosquitto's
    reconnect back-off ``(base, cap)`` in seconds.  ``protocol`` is ``"5"`` (a publish the
    centre's ACL refuses is answered "not authorised") or ``"3.1.1"``.
    """

    site: str
    prefix: str
    host: str
    port: int
    tls: bool
    username: str
    password: str | None = None
    cafile: str = DEFAULT_CAFILE
    certfile: str = ""
    keyfile: str = ""
    protocol: str = "5"
    restart_timeout: tuple[int, int] = (5, 60)
    max_queued_messages: int = DEFAULT_MAX_QUEUED

    def __post_init__(self) -> None:
        Topics(self.site, "bridge", self.prefix)  # the same level checks as the stations' topics
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"bridge protocol: {self.protocol!r} is not one of {tuple(PROTOCOLS)}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("bridge certfile and keyfile must be given together")
        if self.password is None and not self.certfile:
            raise ConfigError(
                f"the centre needs credentials for bridge user {self.username!r}: "
                "give a password file or a client certificate and key"
            )
        if not 1 <= self.restart_timeout[0] <= self.restart_timeout[1]:
            raise ConfigError(f"bridge restart_timeout: need 1 <= base <= cap, got {self.restart_timeout}")
        if self.max_queued_messages < 1000:
            raise ConfigError(f"bridge max_queued_messages: {self.max_queued_messages} is below 1000")
        if any(c.isspace() for c in self.username + (self.password or "")):
            raise ConfigError("bridge user name and password must not contain white space (mosquitto.conf)")

    @property
    def pattern(self) -> str:
        """``<prefix>/<site>/#``: every topic the site's stations publish."""
        return f"{self.prefix}/{self.site}/#"

    @property
    def connection(self) -> str:
        """The bridge's name on the site broker."""
        return f"centre-{self.site}"

    @property
    def state_topic(self) -> str:
        """The site broker's retained link state, ``1`` connected or ``0`` not (named by the client id)."""
        return f"$SYS/broker/connection/bridge-{self.site}/state"


def site_bridge(
    config: Config,
    centre_url: str,
    *,
    password_file: Path | None = None,
    cafile: str = DEFAULT_CAFILE,
    certfile: str = "",
    keyfile: str = "",
) -> SiteBridge:
    """The bridge of ``config``'s site to the broker at ``centre_url`` (``mqtts://[user@]host:port``).

    The password is read from ``password_file`` (its text, white space stripped).  Raises :class:`ConfigError` for a
    bad URL, an unreadable password file, or missing credentials.
    """
    centre = MqttSettings.from_url(centre_url)
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"bridge password file: cannot read it: {exc}") from exc
        if not password:
            raise ConfigError(f"bridge password file {password_file}: it is empty")
    return SiteBridge(
        site=config.site, prefix=config.mqtt.topic_prefix, host=centre.host, port=centre.port,
        tls=centre.tls, username=centre.username or f"bridge-{config.site}", password=password,
        cafile=cafile, certfile=certfile, keyfile=keyfile, protocol=config.mqtt.protocol,
    )  # fmt: skip


def render_site_conf(bridge: SiteBridge, *, with_password: bool) -> str:
    """The site broker's bridge file (for ``/etc/mosquitto/conf.d/``), as text.

    ``with_password=False`` leaves the ``remote_password`` line out (for printing): mosquitto
    reads a bridge's options only inside its own section, so the password cannot come from an
    included file and the written file is the secret (mode 0600).
    """
    b = bridge
    lines = [
        f"# Bridge of site {b.site} to the centre: generated by edge-worker bridge-config.",
        "# Global options: the bridge is one client of this broker, and its queue is what carries",
        "# the site through an outage of the link.  The main config must keep persistence true.",
        "queue_qos0_messages false",
        f"max_queued_messages {b.max_queued_messages}",
        "max_queued_bytes 0",
        "",
        f"connection {b.connection}",
        f"address {b.host}:{b.port}",
        # One direction only: the centre never sends a site's own topics back to it.
        f"topic {b.pattern} out 1",
        f"bridge_protocol_version {PROTOCOLS[b.protocol]}",
        # A persistent session on the centre, and a stable client id naming it.
        "cleansession false",
        f"remote_clientid bridge-{b.site}",
        f"local_clientid bridge-{b.site}-local",
        f"remote_username {b.username}",
    ]
    if b.password is not None:
        lines.append(f"remote_password {b.password}" if with_password else
                     "# remote_password: written only to the file (--out), never printed")  # fmt: skip
    lines += [
        # Marks the connection as a bridge, so a mosquitto centre does not echo messages back.
        "try_private true",
        # The link's state stays on the site broker: the centre's ACL gives the site no $SYS topic.
        "notifications true",
        "notifications_local_only true",
        f"restart_timeout {b.restart_timeout[0]} {b.restart_timeout[1]}",
        "keepalive_interval 30",
        "start_type automatic",
    ]
    if b.tls:
        lines += [f"bridge_cafile {b.cafile}", "bridge_insecure false"]
        if b.certfile:
            lines += [f"bridge_certfile {b.certfile}", f"bridge_keyfile {b.keyfile}"]
    else:
        lines.append("# No TLS (an mqtt:// centre URL): only across a link that is already encrypted.")
    return "\n".join(lines) + "\n"


def render_centre_acl(bridge: SiteBridge) -> str:
    """The centre's ACL lines for this site's bridge user: write its own prefix, read nothing."""
    return (
        f"# Site {bridge.site}: its bridge may publish only below its own prefix.\n"
        f"user {bridge.username}\n"
        f"topic write {bridge.pattern}\n"
    )


def write_files(bridge: SiteBridge, out: Path) -> list[Path]:
    """Write ``bridge-<site>.conf`` (mode 0600, holds the password) and ``centre-acl-<site>``.

    Returns the paths written.  ``out`` is created if missing.
    """
    out.mkdir(parents=True, exist_ok=True)
    conf = out / f"bridge-{bridge.site}.conf"
    acl = out / f"centre-acl-{bridge.site}"
    # Created 0600 from the start: the password is never readable by others, not even briefly.
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render_site_conf(bridge, with_password=True))
    os.chmod(conf, 0o600)
    acl.write_text(render_centre_acl(bridge), encoding="utf-8")
    return [conf, acl]


def run_bridge_config(
    config_path: Path,
    centre_url: str,
    *,
    out: Path | None = None,
    password_file: Path | None = None,
    cafile: str = DEFAULT_CAFILE,
    certfile: str = "",
    keyfile: str = "",
) -> str:
    """``edge-worker bridge-config``: the text to print for the site in ``config_path``.

    With ``out`` the two files are written there and the text names them; without it the text is
    the site's bridge section (password left out) and the centre's ACL lines.  Raises
    :class:`ConfigError` for a bad config, URL or credentials.
    """
    from edge_worker.service.config import load

    bridge = site_bridge(load(config_path), centre_url, password_file=password_file,
                         cafile=cafile, certfile=certfile, keyfile=keyfile)  # fmt: skip
    if out is not None:
        conf, acl = write_files(bridge, out)
        return (
            f"wrote {conf} (mode 0600): install it on the site broker as /etc/mosquitto/conf.d/{conf.name}\n"
            f"wrote {acl}: append it to the centre's acl_file, and add the user there:\n"
            f"  mosquitto_passwd /etc/mosquitto/passwd {bridge.username}\n"
        )
    return (
        f"# --- site broker: /etc/mosquitto/conf.d/bridge-{bridge.site}.conf ---\n"
        + render_site_conf(bridge, with_password=False)
        + "\n# --- centre broker: append to its acl_file ---\n"
        + render_centre_acl(bridge)
    )

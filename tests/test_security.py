"""Security with real processes: MQTT over TLS, passwords from systemd credentials, client
certificates, and the per-station ACLs of the example broker set-up in ``systemd/mosquitto/``.

A throw-away CA, server certificate and client certificates are made with the ``openssl`` CLI.
The broker runs ``systemd/mosquitto/mosquitto.conf`` and ``systemd/mosquitto/acl`` as shipped,
with only file paths and the port replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, Subscriber, find_mosquitto, free_port

from edge_worker.publish.mqtt import MqttSettings, Publisher, Topics
from edge_worker.publish.outbox import Outbox
from tests.stations import PhantomStock, Station, render_toml
from tests.stations import wait_until as until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "systemd" / "mosquitto"
SITE = "sec"
PASSWORDS = {"xr-01": "pw-xr-01-Secret", "xr-02": "pw-xr-02-Secret", "dashboard": "pw-dash-Secret"}


@dataclass(frozen=True)
class Pki:
    folder: Path

    def __getitem__(self, name: str) -> str:
        return str(self.folder / name)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """ca.crt, server.crt/key (localhost, 127.0.0.1), client certs xr-01 and dashboard (CN = user
    name), and rogue (CN xr-01, signed by another CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                 "-subj", f"/CN=edge-worker test {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip

    def leaf(name: str, cn: str, ca: str, ext: str) -> None:
        (d / f"{name}.ext").write_text(
            ext + "\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n"
            "subjectKeyIdentifier=hash\n"
        )
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip

    leaf("server", "localhost", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
         "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth")  # fmt: skip
    for name, cn, ca in (("xr-01", "xr-01", "ca"), ("dashboard", "dashboard", "ca"), ("rogue", "xr-01", "other-ca")):
        leaf(name, cn, ca, "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth")
    return Pki(d)


def example_broker(workdir: Path, pki: Pki, *, client_certs: bool, users: dict[str, str] | None = None) -> Mosquitto:
    """The example mosquitto.conf and acl, with test paths and a free loopback port; ``users``
    (name -> password) replaces :data:`PASSWORDS`."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found in PATH or /usr/sbin (apt install mosquitto)")
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd"
    passwd.touch()
    for user, password in (users or PASSWORDS).items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True)
    shutil.copyfile(EXAMPLE / "acl", workdir / "acl")
    port = free_port()
    conf = (EXAMPLE / "mosquitto.conf").read_text()
    replacements = {
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/etc/mosquitto/certs/": f"{pki.folder}/",
        "/etc/mosquitto/passwd": str(passwd),
        "/etc/mosquitto/acl": str(workdir / "acl"),
        "persistence true\n": "",
        "persistence_location /var/lib/mosquitto/\n": "",
    }
    if client_certs:
        replacements["require_certificate false\n"] = "require_certificate true\nuse_identity_as_username true\n"
    for old, new in replacements.items():
        assert old in conf, f"the example mosquitto.conf no longer has {old!r}"
        conf = conf.replace(old, new)
    broker = Mosquitto(binary, workdir, port=port, extra_config=conf, listener=False)
    broker.start()
    return broker


@pytest.fixture
def password_broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    broker = example_broker(tmp_path / "broker", pki, client_certs=False)
    yield broker
    broker.stop()


@pytest.fixture
def cert_broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    broker = example_broker(tmp_path / "broker", pki, client_certs=True)
    yield broker
    broker.stop()


def dashboard(broker: Mosquitto, pki: Pki, *topics: str) -> Subscriber:
    """A read-only dashboard client over TLS (user ``dashboard``)."""

    def configure(client: Any) -> None:
        # The password serves the password broker; the certificate the client-certificate one.
        client.tls_set(ca_certs=pki["ca.crt"], certfile=pki["dashboard.crt"], keyfile=pki["dashboard.key"])
        client.username_pw_set("dashboard", PASSWORDS["dashboard"])

    return Subscriber(broker.host, broker.port, topics, configure=configure)


@pytest.fixture
def dashboards() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(broker: Mosquitto, pki: Pki, *topics: str) -> Subscriber:
        made.append(dashboard(broker, pki, *topics))
        return made[-1]

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def publishers(tmp_path: Path) -> Iterator[Callable[..., tuple[Publisher, Outbox]]]:
    made: list[tuple[Publisher, Outbox]] = []

    def make(url: str, station: str, **settings: Any) -> tuple[Publisher, Outbox]:
        box = Outbox(tmp_path / f"outbox-{len(made)}.sqlite3")
        pub = Publisher(MqttSettings.from_url(url, protocol="5", **settings), Topics(SITE, station), box)
        made.append((pub, box))
        pub.start()
        return pub, box

    yield make
    for pub, box in made:
        pub.stop()
        box.close()



def tls_url(broker: Mosquitto) -> str:
    return f"mqtts://127.0.0.1:{broker.port}"


# -- the daemon over TLS with a password from systemd credentials ---------------------------


def test_daemon_over_tls_with_password_from_systemd_credentials(
    tmp_path: Path, pki: Pki, password_broker: Mosquitto, dashboards: Callable[..., Subscriber]
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "mqtt-password").write_text(PASSWORDS["xr-01"] + "\n")
    station = Station(
        tmp_path / "st", tls_url(password_broker), site=SITE, station="xr-01",
        tables={"mqtt": {"username": "xr-01", "protocol": "5"}, "mqtt.tls": {"ca_file": pki["ca.crt"]}},
        env={"CREDENTIALS_DIRECTORY": str(creds)},
    )  # fmt: skip
    sub = dashboards(password_broker, pki, f"{station.base}/#")
    try:
        station.start()
        assert sub.wait_for(f"{station.base}/availability", 1, timeout=20)[-1].payload == b"online"
        PhantomStock(tmp_path / "phantoms").drop(6100, station.watch)
        verdict = json.loads(sub.wait_for(f"{station.base}/verdict", 1, timeout=30)[0].payload)
        assert verdict["station"] == "xr-01"
        status = json.loads(sub.wait_for(f"{station.base}/status", 1, timeout=10)[-1].payload)
        assert status["broker_connected"] is True
        assert PASSWORDS["xr-01"] not in station.log_text()
        rc, _ = station.terminate()
        assert rc == 0
    finally:
        station.close()


def test_daemon_with_a_wrong_password_reports_a_clear_health_failure(
    tmp_path: Path, pki: Pki, password_broker: Mosquitto
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "mqtt-password").write_text("not-the-password\n")
    port = free_port()
    station = Station(
        tmp_path / "st", tls_url(password_broker), site=SITE, station="xr-01",
        tables={"mqtt": {"username": "xr-01", "protocol": "5"}, "mqtt.tls": {"ca_file": pki["ca.crt"]},
                "service": {"metrics_listen": f"127.0.0.1:{port}"}},
        env={"CREDENTIALS_DIRECTORY": str(creds)},
    )  # fmt: skip
    try:
        station.start()
        line = until("a broker health failure in the log", lambda: next(
            (x for x in station.log_text().splitlines() if "health: broker:" in x), None), 20)  # fmt: skip
        print(f"wrong password: {line}")
        assert "Bad user name or password" in line or "Not authorized" in line, line
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "edge_worker_healthy 0" in body and "edge_worker_broker_connected 0" in body
        assert station.alive()
        assert "not-the-password" not in station.log_text()
    finally:
        station.close()


# -- client certificates ----------------------------------------------------------------------


def test_client_certificate_accepted_and_missing_or_foreign_certificate_refused(
    pki: Pki, cert_broker: Mosquitto, dashboards: Callable[..., Subscriber],
    publishers: Callable[..., tuple[Publisher, Outbox]],
) -> None:
    topic = f"xray/{SITE}/xr-01/verdict"
    sub = dashboards(cert_broker, pki, topic)
    good, good_box = publishers(tls_url(cert_broker), "xr-01", ca_file=pki["ca.crt"],
                                cert_file=pki["xr-01.crt"], key_file=pki["xr-01.key"])  # fmt: skip
    good.publish("verdict", {"id": "cert-1"}, key="cert-1")
    assert json.loads(sub.wait_for(topic, 1, timeout=10)[0].payload) == {"id": "cert-1"}
    until("the outbox emptied", lambda: good_box.depth() == 0)

    none, none_box = publishers(tls_url(cert_broker), "xr-01", ca_file=pki["ca.crt"], client_id="no-cert")
    rogue, rogue_box = publishers(tls_url(cert_broker), "xr-01", ca_file=pki["ca.crt"], client_id="rogue",
                                  cert_file=pki["rogue.crt"], key_file=pki["rogue.key"])  # fmt: skip
    none.publish("verdict", {"id": "nocert-1"}, key="nocert-1")
    rogue.publish("verdict", {"id": "rogue-1"}, key="rogue-1")
    for pub in (none, rogue):
        error = until("a connection error", lambda p=pub: p.last_error)  # type: ignore[misc]
        print(f"refused: {error}")
        assert not pub.connected
    time.sleep(1.0)
    assert len(sub.messages(topic)) == 1  # nothing from the refused clients
    assert none_box.depth() == 1 and rogue_box.depth() == 1  # kept, never dropped


# -- per-station ACLs -------------------------------------------------------------------------


def test_a_station_cannot_publish_to_another_stations_topics(
    pki: Pki, password_broker: Mosquitto, dashboards: Callable[..., Subscriber],
    publishers: Callable[..., tuple[Publisher, Outbox]],
) -> None:
    sub = dashboards(password_broker, pki, f"xray/{SITE}/#")
    # xr-01's credentials, xr-02's topics: what a misconfigured or compromised box would try.
    impostor, impostor_box = publishers(
        tls_url(password_broker), "xr-02", ca_file=pki["ca.crt"], username="xr-01",
        password=PASSWORDS["xr-01"], client_id="xr-01-as-xr-02",
    )  # fmt: skip
    honest, _ = publishers(tls_url(password_broker), "xr-01", ca_file=pki["ca.crt"], username="xr-01",
                           password=PASSWORDS["xr-01"], client_id="xr-01")  # fmt: skip
    until("both connected", lambda: impostor.connected and honest.connected)
    impostor.publish("verdict", {"id": "forged"}, key="forged")
    honest.publish("verdict", {"id": "own"}, key="own")
    sub.wait_for(f"xray/{SITE}/xr-01/verdict", 1, timeout=10)
    error = until("the refusal", lambda: impostor.last_error)
    print(f"xr-01 publishing as xr-02: {error}")
    assert "refused" in error and "authori" in error.lower(), error
    time.sleep(1.0)
    assert sub.messages(f"xray/{SITE}/xr-02/verdict") == []
    assert [e.key for e in impostor_box.pending()] == ["forged"]  # refused, kept, not lost

    # The dashboard user reads everything and may write nothing.
    dash, _ = publishers(tls_url(password_broker), "xr-03", ca_file=pki["ca.crt"],
                                username="dashboard", password=PASSWORDS["dashboard"])  # fmt: skip
    dash.publish("verdict", {"id": "from-dashboard"}, key="from-dashboard")
    assert "refused" in until("the dashboard's refusal", lambda: dash.last_error)
    assert sub.messages(f"xray/{SITE}/xr-03/verdict") == []


# -- edge-worker check over TLS ---------------------------------------------------------------


def test_check_honours_tls_credentials_and_reports_acl_refusals(
    tmp_path: Path, pki: Pki, password_broker: Mosquitto
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "mqtt-password").write_text(PASSWORDS["xr-01"] + "\n")

    def check(station: str, password: str) -> tuple[int, str]:
        (creds / "mqtt-password").write_text(password + "\n")
        path = tmp_path / f"{station}.toml"
        path.write_text(render_toml({"site": SITE, "station": station}, {
            "watch": {"folder": str(tmp_path / "in")},
            "mqtt": {"url": tls_url(password_broker), "username": "xr-01"},
            "mqtt.tls": {"ca_file": pki["ca.crt"]},
        }))  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "edge_worker", "check", "--config", str(path)],
            capture_output=True, text=True, timeout=120, check=False,
            env=dict(os.environ, CREDENTIALS_DIRECTORY=str(creds)),
        )  # fmt: skip
        broker_line = next(x for x in result.stdout.splitlines() if " broker:" in x)
        print(broker_line)
        return result.returncode, broker_line

    rc, line = check("xr-01", PASSWORDS["xr-01"])
    assert rc == 0 and line.startswith("ok") and "mqtts://" in line, line
    rc, line = check("xr-02", PASSWORDS["xr-01"])  # xr-01's credentials on xr-02's topics
    assert rc == 1 and "refused the test message" in line and "Not authorized" in line, line
    rc, line = check("xr-01", "wrong")
    assert rc == 1 and "refused the connection" in line, line

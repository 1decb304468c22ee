"""Install by command topic, with the example broker's ACLs (TLS, passwords, MQTT 5) and a real daemon.

Only the ``rollout`` user may write command topics: the same command from a station user or the
dashboard is refused by the broker (PUBACK 0x87 under MQTT 5, so the sender sees it), the station
never receives it, judges on and loses nothing, and its running pack stays.  From ``rollout``,
malformed commands and commands whose digest does not match the store are refused with a reason
on ``command/result``; the right one installs the pack through the rollout (the digest in the
verdicts switches) and is acted on once.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, Subscriber
from test_security import PASSWORDS, Pki, example_broker, pki, tls_url  # noqa: F401  (pki: the CA fixture)

from edge_worker.packs.pack import default_pack_dir, load_pack, seal_manifest
from tests.stations import ROOT, PhantomStock, Station

pytestmark = pytest.mark.broker
jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = {name: json.loads((ROOT / "edge_worker" / "schema" / f"{name}.schema.json").read_text())
           for name in ("command", "command-result", "pack")}  # fmt: skip
SITE = "sec"
USERS = {**PASSWORDS, "rollout": "pw-rollout-Secret"}


class Client:
    """A paho MQTT 5 client over TLS as one broker user; :meth:`send` returns the PUBACK reason."""

    def __init__(self, broker: Mosquitto, certs: Pki, user: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._acks: dict[int, Any] = {}
        self._cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{uuid.uuid4().hex[:6]}",
                                  protocol=paho.MQTTv5)  # fmt: skip
        self.client.tls_set(ca_certs=certs["ca.crt"])
        self.client.username_pw_set(user, USERS[user])
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, client: object, userdata: object, mid: int, reason: Any, props: object) -> None:
        with self._cond:
            self._acks[mid] = reason
            self._cond.notify_all()

    def send(self, topic: str, payload: bytes | dict[str, Any], retain: bool = False) -> str:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.client.publish(topic, body, qos=1, retain=retain)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self._acks, 10), "no PUBACK"
            return str(self._acks[info.mid])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def command(pack: str, digest: str, action: str = "install", **extra: Any) -> dict[str, Any]:
    return {"schema": "xray-qc/command@1", "id": str(uuid.uuid4()), "action": action, "pack": pack,
            "digest": digest, "issued_by": "test", "issued_at": "2026-12-03T00:00:00Z", **extra}  # fmt: skip


@pytest.fixture
def rig(tmp_path: Path, pki: Pki) -> Iterator[tuple[Mosquitto, list[Client], list[Subscriber]]]:  # noqa: F811
    broker = example_broker(tmp_path / "broker", pki, client_certs=False, users=USERS)
    clients: list[Client] = []
    subs: list[Subscriber] = []
    yield broker, clients, subs
    for c in clients:
        c.close()
    for s in subs:
        s.close()
    broker.stop()


def test_a_rollout_command_from_a_client_without_the_right_is_refused_reported_nothing_lost_pack_untouched(
    tmp_path: Path, pki: Pki, rig: tuple[Mosquitto, list[Client], list[Subscriber]],  # noqa: F811
) -> None:  # fmt: skip
    broker, clients, subs = rig
    store, rollout = tmp_path / "store", tmp_path / "packs"
    shutil.copytree(default_pack_dir(), tmp_path / "ankle-v1")
    old = load_pack(tmp_path / "ankle-v1").digest
    shutil.copytree(default_pack_dir(), store / "ankle-v2")
    manifest = json.loads((store / "ankle-v2" / "manifest.json").read_text())
    manifest["description"] = "v2: same networks, another pack"
    (store / "ankle-v2" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_manifest(store / "ankle-v2")
    new = load_pack(store / "ankle-v2").digest
    shutil.copytree(store / "ankle-v2", store / "ankle-v2-copy")
    (store / "ankle-v2-copy" / "README.md").write_text("changed after the command was issued\n")

    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "mqtt-password").write_text(USERS["xr-01"] + "\n")
    station = Station(tmp_path / "st", tls_url(broker), site=SITE, station="xr-01", tables={
        "mqtt": {"username": "xr-01", "protocol": "5"}, "mqtt.tls": {"ca_file": pki["ca.crt"]},
        "pack": {"path": str(tmp_path / "ankle-v1"), "bundled": False, "rollout_folder": str(rollout),
                 "commands": True, "store_folder": str(store)},
    }, env={"CREDENTIALS_DIRECTORY": str(creds)})  # fmt: skip
    base = station.base
    verdicts, results, pack_topic = f"{base}/verdict", f"{base}/command/result", f"{base}/pack"

    def dashboard_sub() -> Subscriber:
        def configure(client: Any) -> None:
            client.tls_set(ca_certs=pki["ca.crt"])
            client.username_pw_set("dashboard", USERS["dashboard"])

        subs.append(Subscriber(broker.host, broker.port, (f"{base}/#", f"xray/{SITE}/command"), configure=configure))
        return subs[-1]

    sub = dashboard_sub()
    stock = PhantomStock(tmp_path / "stock")
    try:
        station.start()
        until_listening = time.monotonic() + 30
        while "commands: listening on" not in station.log_text() and time.monotonic() < until_listening:
            time.sleep(0.1)
        assert "commands: listening on" in station.log_text(), station.log_tail()
        stock.drop(1, station.watch)
        assert json.loads(sub.wait_for(verdicts, 1, timeout=60)[0].payload)["pack"]["digest"] == old

        def as_xr02(client: Any) -> None:
            client.tls_set(ca_certs=pki["ca.crt"])
            client.username_pw_set("xr-02", USERS["xr-02"])

        # Another station may not read xr-01's commands (the broker never delivers them to it).
        snoop = Subscriber(broker.host, broker.port, (f"{base}/command",), configure=as_xr02)
        subs.append(snoop)

        # Without the right: a station user (its own and the site-wide topic) and the dashboard.
        for user in ("xr-01", "xr-02", "dashboard"):
            c = Client(broker, pki, user)
            clients.append(c)
            for topic in (f"{base}/command", f"xray/{SITE}/command"):
                reason = c.send(topic, command("ankle-v2", new))
                print(f"{user} -> {topic}: {reason}")
                assert reason == "Not authorized", (user, topic, reason)
        stock.drop(2, station.watch)
        got = sub.wait_for(verdicts, 2, timeout=60)
        assert [json.loads(m.payload)["pack"]["digest"] for m in got] == [old, old]  # nothing lost, untouched
        assert sub.messages(f"{base}/command") == [] and sub.messages(results) == [] and sub.messages(pack_topic) == []

        # With the right, but malformed or naming other content: refused with a reason.
        rollout_user = Client(broker, pki, "rollout")
        clients.append(rollout_user)
        bad = [
            (b"{not json", None, "not JSON"),
            (json.dumps({**command("ankle-v2", new), "schema": "xray-qc/command@0"}).encode(), "id", "schema"),
            (json.dumps(command("ankle-v2", new, action="delete")).encode(), "id", "action"),
            (json.dumps(command("../ankle-v2", new)).encode(), "id", "pack"),
            (json.dumps(command("ankle-v9", new)).encode(), "id", "no such folder"),
            (json.dumps(command("ankle-v2-copy", new)).encode(), "id", "a different pack"),
            (json.dumps(command("ankle-v2", old)).encode(), "id", "a different pack"),
            (json.dumps(command("", old, action="rollback")).encode(), "id", "no previous pack"),
        ]
        for n, (body, has_id, why) in enumerate(bad, start=1):
            assert rollout_user.send(f"{base}/command", body) == "Success"
            answer = json.loads(sub.wait_for(results, n, timeout=30)[-1].payload)
            jsonschema.validate(answer, SCHEMAS["command-result"])
            assert answer["state"] == "refused" and why in answer["reason"], (why, answer)
            assert (answer["id"] is None) == (has_id is None), answer
        assert station.alive()
        assert [p.name for p in rollout.iterdir() if not p.name.startswith(".")] == []  # nothing handed over
        stock.drop(3, station.watch)
        assert json.loads(sub.wait_for(verdicts, 3, timeout=60)[-1].payload)["pack"]["digest"] == old

        # The right command, site-wide: installed through the rollout; the digest switches.
        good = command("ankle-v2", new)
        jsonschema.validate(good, SCHEMAS["command"])
        assert rollout_user.send(f"xray/{SITE}/command", good) == "Success"
        answer = json.loads(sub.wait_for(results, len(bad) + 1, timeout=30)[-1].payload)
        assert (answer["state"], answer["id"], answer["digest"]) == ("handed_over", good["id"], new), answer
        decision = json.loads(sub.wait_for(pack_topic, 1, timeout=180)[0].payload)
        jsonschema.validate(decision, SCHEMAS["pack"])
        assert (decision["state"], decision["digest"], decision["previous_digest"]) == ("accepted", new, old)
        stock.drop(4, station.watch)
        assert json.loads(sub.wait_for(verdicts, 4, timeout=60)[-1].payload)["pack"]["digest"] == new

        # Back by command, sent while the station is away: its persistent session keeps it.  A
        # rollback names the previous pack's digest.
        station.terminate()
        back = command("", old, action="rollback")
        assert rollout_user.send(f"{base}/command", back) == "Success"
        station.start()
        answer = json.loads(sub.wait_for(results, len(bad) + 2, timeout=60)[-1].payload)
        assert (answer["state"], answer["id"]) == ("handed_over", back["id"]), answer
        # Acted on once: the same id again (after a restart) installs nothing.
        assert rollout_user.send(f"{base}/command", good) == "Success"
        answer = json.loads(sub.wait_for(results, len(bad) + 3, timeout=60)[-1].payload)
        assert (answer["state"], answer["id"]) == ("duplicate", good["id"]), answer
        decision = json.loads(sub.wait_for(pack_topic, 2, timeout=180)[-1].payload)
        assert (decision["state"], decision["digest"], decision["previous_digest"]) == ("accepted", old, new)
        stock.drop(5, station.watch)
        assert json.loads(sub.wait_for(verdicts, 5, timeout=60)[-1].payload)["pack"]["digest"] == old
        assert len(sub.messages(pack_topic)) == 2 and station.alive()
        assert len(sub.messages(f"{base}/command")) >= len(bad) + 2  # the dashboard saw them
        assert snoop.messages(f"{base}/command") == []
        assert "health: commands" not in station.log_text()
    finally:
        station.close()

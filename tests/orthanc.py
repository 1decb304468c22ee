"""A real Orthanc PACS for tests: ``/usr/sbin/Orthanc`` on free loopback ports.

:class:`Orthanc` writes a config (temporary storage, HTTP and DICOM on 127.0.0.1, the station's
AE title in ``DicomModalities``), starts the server, waits for ``/system`` and stops it.  The
``orthanc`` fixture (import ``orthanc_fixture``) skips cleanly when the binary is absent.  Read back through the REST API:
:meth:`Orthanc.instances`, :meth:`Orthanc.file` (the stored DICOM bytes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

ORTHANC = "/usr/sbin/Orthanc"
AE_TITLE = "ORTHANC"
STATION_AE = "EDGEWORKER"


def find_orthanc() -> str | None:
    """The Orthanc binary (PATH, then Debian's /usr/sbin), or None."""
    return shutil.which("Orthanc") or (ORTHANC if Path(ORTHANC).exists() else None)


class Orthanc:
    """One Orthanc server with its own storage; restartable on the same storage and ports."""

    def __init__(self, workdir: Path, *, station_ae: str = STATION_AE, tls: dict[str, str] | None = None) -> None:
        """``tls``: ``{"cert", "key", "ca"}`` file paths: DICOM TLS on, client certificate required."""
        binary = find_orthanc()
        if binary is None:
            pytest.skip("Orthanc not installed (Debian package orthanc)")
        self.binary = binary
        self.workdir = workdir
        self.http_port, self.dicom_port = free_port(), free_port()
        self.ae_title = AE_TITLE
        self.log_path = workdir / "orthanc.log"
        (workdir / "storage").mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "edge-worker-test",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": AE_TITLE,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            # Only the station's AE may store or echo: an unknown calling AE is refused.
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": {"station": [station_ae, "127.0.0.1", 104]},
            "UnknownSopClassAccepted": False,
            "Plugins": [],
            "StableAge": 1,
        }
        if tls:
            config.update({
                "DicomTlsEnabled": True, "DicomTlsCertificate": tls["cert"], "DicomTlsPrivateKey": tls["key"],
                "DicomTlsTrustedCertificates": tls["ca"], "DicomTlsRemoteCertificateRequired": True,
            })  # fmt: skip
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start Orthanc and wait until ``/system`` answers (fails the test with its log if not)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        pytest.fail(f"Orthanc did not answer /system within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL); its storage stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def get(self, path: str) -> Any:
        """GET ``path`` and decode its JSON."""
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def instances(self) -> list[str]:
        """Orthanc's ids of every stored instance."""
        return list(self.get("/instances"))

    def file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of one instance."""
        with urllib.request.urlopen(f"{self.url}/instances/{orthanc_id}/file", timeout=5) as resp:
            return bytes(resp.read())

    def by_sop_uid(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc id, for every stored instance."""
        out = {}
        for oid in self.instances():
            tags = self.get(f"/instances/{oid}/simplified-tags")
            out[str(tags["SOPInstanceUID"])] = oid
        return out

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(name="orthanc")
def orthanc_fixture(tmp_path: Path) -> Iterator[Orthanc]:
    """A started Orthanc accepting AE ``EDGEWORKER``; stopped at teardown (skips when absent)."""
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()

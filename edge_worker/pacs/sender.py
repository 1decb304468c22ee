"""C-STORE and C-ECHO to the configured PACS (pynetdicom), with typed outcomes.

Every attempt ends in a :class:`SendResult` whose ``reason`` is one of :data:`REASONS`; none
raises.  ``sent`` includes the warning statuses (0xB000, 0xB006, 0xB007: stored, with coercion
or elements discarded; PS3.4 Annex B.2.3).  ``pacs_full`` is "Refused: Out of Resources"
(0xA7xx); ``sop_class_refused`` means the PACS accepted the association but no presentation
context for the object's SOP class; ``association_rejected`` covers an unknown or refused AE
title.  TLS is pynetdicom's ``tls_args`` with an :class:`ssl.SSLContext` built from the config.
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

log = logging.getLogger(__name__)

#: Every outcome reason; all but ``sent`` are failures (retried with back-off by the desk).
REASONS = (
    "sent", "unreachable", "tls_failed", "association_rejected", "association_aborted", "timeout",
    "sop_class_refused", "pacs_full", "failed_status", "invalid_object",
)  # fmt: skip
_WARNINGS = (0xB000, 0xB006, 0xB007)


@dataclass(frozen=True)
class PacsTarget:
    """Where and how to reach the PACS (from ``[pacs]``)."""

    host: str
    port: int
    called_ae: str
    ae_title: str = "EDGEWORKER"
    timeout_s: float = 10.0
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls: bool = False

    @property
    def address(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


@dataclass(frozen=True)
class SendResult:
    """What one C-STORE (or C-ECHO) came to: ``reason`` from :data:`REASONS`, a sentence,
    and the DIMSE status when the PACS answered one."""

    reason: str
    detail: str
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason == "sent"


def tls_context(target: PacsTarget) -> ssl.SSLContext:
    """Client TLS context: the PACS's CA (or the system store), our certificate if given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=target.tls_ca or None)
    if target.tls_cert:
        ctx.load_cert_chain(target.tls_cert, target.tls_key or None)
    return ctx


class Sender:
    """Opens one association per call to :meth:`store` or :meth:`echo`."""

    def __init__(self, target: PacsTarget) -> None:
        self.target = target

    def _ae(self, sop_classes: Sequence[str]) -> AE:
        ae = AE(ae_title=self.target.ae_title)
        for uid in dict.fromkeys(sop_classes):
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        t = self.target.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = t
        return ae

    def _associate(self, sop_classes: Sequence[str]) -> Association | SendResult:
        t = self.target
        context: ssl.SSLContext | None = None
        if t.tls:
            try:
                context = tls_context(t)
            except OSError as exc:  # ssl.SSLError is an OSError
                return SendResult("tls_failed", f"TLS files for {t.address}: {exc}")
        # A probe first: pynetdicom reports "nothing listens" and a failed TLS handshake alike,
        # as an aborted association.
        try:
            with socket.create_connection((t.host, t.port), timeout=t.timeout_s) as sock:
                if context is not None:
                    context.wrap_socket(sock, server_hostname=t.host).close()
        except ssl.SSLError as exc:
            return SendResult("tls_failed", f"{t.address}: TLS handshake failed: {exc.reason or exc}")
        except TimeoutError:
            return SendResult("timeout", f"{t.address}: no TCP connection within {t.timeout_s:g} s")
        except OSError as exc:
            return SendResult("unreachable", f"{t.address}: {exc.strerror or exc}")
        # Twice at most: a PACS that rejects and closes at once (DCMTK) can reset the connection
        # before its A-ASSOCIATE-RJ is read, which looks like an abort; the second try tells.
        for _ in range(2):
            try:
                assoc = self._ae(sop_classes).associate(t.host, t.port, ae_title=t.called_ae,
                                                        tls_args=None if context is None else (context, t.host))  # fmt: skip
            except OSError as exc:  # ssl.SSLError is an OSError
                return SendResult("tls_failed" if isinstance(exc, ssl.SSLError) else "unreachable", f"{t.address}: {exc}")
            if assoc.is_established:
                return assoc
            if assoc.is_rejected:
                return SendResult("association_rejected", f"{t.address} rejected the association of AE "
                                  f"{t.ae_title} (is it in the PACS's list of modalities?)")  # fmt: skip
        why = "TLS handshake failed or " if t.tls else ""
        return SendResult("association_aborted", f"{t.address}: {why}the association was aborted or timed out")

    def echo(self) -> SendResult:
        """C-ECHO: whether the PACS answers and accepts our AE."""
        assoc = self._associate([Verification])
        if isinstance(assoc, SendResult):
            return assoc
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        code = int(status.Status) if status and "Status" in status else None
        if code == 0x0000:
            return SendResult("sent", f"{self.target.address} answered C-ECHO", code)
        if code is None:
            return SendResult("timeout", f"{self.target.address}: no C-ECHO answer")
        return SendResult("failed_status", f"{self.target.address}: C-ECHO status 0x{code:04X}", code)

    def store(self, objects: Sequence[bytes]) -> list[SendResult]:
        """C-STORE each DICOM Part 10 object in one association; one result per object."""
        datasets: list[Dataset | SendResult] = []
        for data in objects:
            try:
                datasets.append(pydicom.dcmread(io.BytesIO(data)))
            except Exception as exc:  # noqa: BLE001  (pydicom raises many types for a torn file; it was ours)
                datasets.append(SendResult("invalid_object", f"not a DICOM file: {exc}"))
        classes = [str(d.SOPClassUID) for d in datasets if isinstance(d, Dataset)]
        if not classes:
            return [d for d in datasets if isinstance(d, SendResult)]
        # Verification too: with no context accepted pynetdicom aborts, and a refused SOP class
        # would read as a dropped association.
        assoc = self._associate([*classes, Verification])
        if isinstance(assoc, SendResult):
            return [d if isinstance(d, SendResult) else assoc for d in datasets]
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        results: list[SendResult] = []
        try:
            for d in datasets:
                if isinstance(d, SendResult):
                    results.append(d)
                elif not assoc.is_established:
                    results.append(SendResult("association_aborted", f"{self.target.address} dropped the association"))
                elif str(d.SOPClassUID) not in accepted:
                    results.append(SendResult("sop_class_refused", f"{self.target.address} accepts no "
                                              f"{d.SOPClassUID.name} ({d.SOPClassUID})"))  # fmt: skip
                else:
                    results.append(self._store_one(assoc, d))
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    def _store_one(self, assoc: Association, ds: Dataset) -> SendResult:
        started = time.monotonic()
        status = assoc.send_c_store(ds)
        code = int(status.Status) if status and "Status" in status else None
        where = self.target.address
        if code is None:
            slow = time.monotonic() - started >= 0.9 * self.target.timeout_s
            return SendResult("timeout" if slow else "association_aborted",
                              f"{where}: no C-STORE answer ({'timed out' if slow else 'association dropped'})")  # fmt: skip
        if code == 0x0000 or code in _WARNINGS:
            return SendResult("sent", f"{where} stored {ds.SOPInstanceUID}", code)
        if code & 0xFF00 == 0xA700:
            return SendResult("pacs_full", f"{where}: out of resources (status 0x{code:04X})", code)
        return SendResult("failed_status", f"{where}: C-STORE failed with status 0x{code:04X}", code)

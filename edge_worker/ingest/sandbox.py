"""Read and decode files in a separate process with a hard memory and time bound.

A hostile or broken file can make a decoder allocate gigabytes (OpenJPEG allocates from a
codestream's marker segments: 96 bytes declaring 58,081 tiles cost it 590 MB) or spin for
minutes.  In the daemon's own process, under systemd's ``MemoryMax``, that is a kill, a
restart, the same file again: a crash loop.  :class:`DecodeSandbox` runs
:func:`edge_worker.ingest.read_radiograph` in one long-lived child process instead
(``python -m edge_worker.ingest.sandbox FD MIB``), which:

* imports every decoder library once, then limits its data segment (``RLIMIT_DATA``: heap and
  private writable mappings, which numpy's and the codecs' buffers are) to its idle size plus
  ``memory_mib``; an allocation past it fails inside the decoder and becomes a
  ``decode_budget_exceeded`` rejection, and the child goes on to the next file;
* answers one file at a time over a socket pair (:mod:`multiprocessing.connection` framing,
  pickled results); the pixels come back already reduced to the working size.

The parent waits at most ``timeout_s`` for an answer.  A child that is too slow is killed
(``decode_budget_exceeded``), one that dies (a decoder's segfault, the kernel's OOM killer) is
a rejection too (``decode_failed`` naming the signal, or ``decode_budget_exceeded`` for
SIGKILL); either way the next file gets a fresh child.  The daemon never dies of a file.

A subprocess, not :mod:`multiprocessing`: its ``spawn`` and ``forkserver`` start methods
re-import the parent's ``__main__``, which for ``python -m edge_worker`` is the daemon itself.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edge_worker.errors import EdgeWorkerError, Rejection, RejectReason
from edge_worker.ingest.reader import SOP_UID_ATTRIBUTE, read_radiograph
from edge_worker.ingest.types import IngestPolicy, Radiograph

log = logging.getLogger(__name__)

#: How long a fresh child may take to import its libraries and say it is ready.
START_TIMEOUT_S = 60.0
#: Largest buffer the child takes from its heap, and the free heap it keeps between files.
HEAP_KEEP_BYTES = 128 << 20
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _vm_data_bytes() -> int:
    """This process's data segment (``VmData``: what ``RLIMIT_DATA`` is checked against)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmData in /proc/self/status")


def _warm() -> None:
    """Import every decoder library now, so that the memory limit measures decodes only."""
    import importlib.util

    from edge_worker.ingest.decoders import DECODERS

    for uid, decoders in DECODERS.items():
        for decoder in decoders:
            decoder.missing(uid)
    if importlib.util.find_spec("cv2") is not None:
        import cv2  # noqa: F401 - the reduced JPEG decoder imports it on first use


def _rejection(reason: RejectReason, detail: str, sop_uid: str | None = None) -> Rejection:
    rejection = Rejection(reason, detail)
    setattr(rejection, SOP_UID_ATTRIBUTE, sop_uid)
    return rejection


class DecodeSandbox:
    """One decode child process, restarted when a file kills it; safe from several threads.

    ``memory_mib``: what one file may allocate above the child's idle size.  ``timeout_s``:
    how long one file's read and decode may take.
    """

    def __init__(self, memory_mib: int, timeout_s: float) -> None:
        self.memory_mib = memory_mib
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        #: Children started so far (the first, and one after each death or kill).
        self.starts = 0
        #: The limit the current child set on itself, in bytes (idle size + budget).
        self.limit_bytes = 0
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child now (else the first :meth:`read` does); EdgeWorkerError if it fails."""
        with self._lock:
            self._closing = False
            try:
                self._ensure()
            except OSError as exc:
                raise EdgeWorkerError(f"cannot start the decode process: {exc}") from exc

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to exit, kill it if it does not, and reap it.

        A file still decoding after ``timeout`` s is abandoned: its :meth:`read` raises
        EdgeWorkerError (not a Rejection), so the file is judged again at the next start.
        """
        self._closing = True
        if not self._lock.acquire(timeout=timeout):
            proc = self._proc
            if proc is not None:
                proc.kill()  # the read in flight sees the end of its connection
            self._lock.acquire()
        try:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass  # already gone
            self._reap(timeout)
        finally:
            self._lock.release()

    def pid(self) -> int | None:
        """The running child's process id, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _ensure(self) -> Connection:
        if self._conn is not None and self._proc is not None and self._proc.poll() is None:
            return self._conn
        self._reap(1.0)
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
        # Serve buffers up to this size from a heap that is kept between files: otherwise every
        # file pays the page faults of its 20-40 MB of buffers again (glibc mallopt(3) names).
        for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
            env.setdefault(name, str(HEAP_KEEP_BYTES))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_worker.ingest.sandbox",
                 str(theirs.fileno()), str(self.memory_mib)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        self._proc, self._conn = proc, conn
        self.starts += 1
        if not conn.poll(START_TIMEOUT_S):
            self._reap(0.0)
            raise OSError(f"the decode process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            ready = conn.recv()
        except (EOFError, OSError) as exc:
            code = proc.wait(5)
            self._reap(0.0)
            raise OSError(f"the decode process exited with {code} while starting") from exc
        self.limit_bytes = int(ready[1])
        log.info("decode process %d limited to %d MiB of data", proc.pid, self.limit_bytes >> 20)
        return conn

    def _reap(self, timeout: float) -> int | None:
        """Close the connection, wait up to ``timeout`` s, then kill; returns the exit code."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    # -- work ------------------------------------------------------------------------------
    def read(
        self, path: str | os.PathLike[str], policy: IngestPolicy, max_side: int | None = None
    ) -> Radiograph:
        """:func:`read_radiograph` in the child: the same result, or the same Rejection.

        Raises :class:`Rejection` (DECODE_BUDGET) when the child took longer than
        ``timeout_s`` or was killed, DECODE_FAILED when it died otherwise; EdgeWorkerError
        when no child can be started or :meth:`stop` ended the decode (no verdict on the
        file: it is judged again at the next start).
        """
        with self._lock:
            if self._closing:
                raise EdgeWorkerError("the decode process is stopping")
            request = (os.fspath(path), policy, max_side)
            try:
                conn = self._ensure()
                try:
                    conn.send(request)
                except OSError:  # it died while idle: no fault of this file, so a fresh one
                    self._reap(1.0)
                    conn = self._ensure()
                    conn.send(request)
            except OSError as exc:
                # Not the file's fault either: no verdict, the daemon reports its health.
                self._reap(1.0)
                raise EdgeWorkerError(f"cannot run the decode process: {exc}") from exc
            if not conn.poll(self.timeout_s):
                log.warning("%s: decode still running after %g s; killing the decode process",
                            Path(path).name, self.timeout_s)  # fmt: skip
                self._reap(0.0)
                raise _rejection(
                    RejectReason.DECODE_BUDGET,
                    f"the decode took longer than {self.timeout_s:g} s "
                    "(ingest.decode_timeout_seconds) and was stopped",
                )
            try:
                reply: Any = conn.recv()
            except (EOFError, OSError):
                if self._closing:
                    self._reap(1.0)
                    raise EdgeWorkerError(f"{Path(path).name}: decode abandoned on stop") from None
                raise self._died() from None
        if reply[0] == "ok":
            result: Radiograph = reply[1]
            return result
        _, reason, detail, sop_uid = reply
        raise _rejection(RejectReason(reason), detail, sop_uid)

    def _died(self) -> Rejection:
        code = self._reap(5.0)
        log.warning("the decode process died (exit status %s); the next file gets a new one", code)
        if code is not None and code < 0 and -code == signal.SIGKILL:
            return _rejection(
                RejectReason.DECODE_BUDGET,
                "the decode process was killed (SIGKILL: out of memory?) while decoding",
            )
        what = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
        return _rejection(RejectReason.DECODE_FAILED, f"the decode process died ({what}) while decoding")


# -- the child -------------------------------------------------------------------------------
def _serve(conn: Connection, memory_mib: int) -> None:
    """Answer ``(path, policy, max_side)`` requests until ``None`` or the parent is gone."""
    _warm()
    limit = _vm_data_bytes() + (memory_mib << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    conn.send(("ready", limit))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the daemon is gone
        if request is None:
            return
        path, policy, max_side = request
        reply: tuple[Any, ...]
        try:
            reply = ("ok", read_radiograph(path, policy, max_side=max_side))
        except Rejection as rejection:
            uid = getattr(rejection, SOP_UID_ATTRIBUTE, None)
            reply = ("rejected", rejection.reason.value, rejection.detail, uid)
        except MemoryError:
            reply = ("rejected", RejectReason.DECODE_BUDGET.value,
                     f"out of memory above the {memory_mib} MiB budget", None)  # fmt: skip
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("rejected", RejectReason.DECODE_BUDGET.value,
                       "out of memory sending the result", None))  # fmt: skip
        except OSError:
            return
        del reply


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m edge_worker.ingest.sandbox FD MEMORY_MIB``."""
    args = sys.argv[1:] if argv is None else argv
    # The daemon stops this process with its own work, not with systemd's SIGTERM to the
    # whole cgroup, which would fail the file in flight.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s decode process: %(message)s")
    _serve(Connection(int(args[0])), int(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Has a file stopped changing?  A content fingerprint that costs the same for every size.

Size, mtime and ctime are what a writer and the file system say; they are not always true:
a copy tool sets the source's mtime, an SMB or NFS client caches attributes for seconds, a
writer preallocates the file at its full size and fills it later.  The watcher therefore also
compares what the file holds, cheaply: :func:`fingerprint` reads the size, the first and last
64 KiB and eight 4 KiB blocks spread between them (about 160 KiB), so a 50 GiB sparse file
costs no more than a small one, and says whether the last 64 KiB are all zeros (preallocated
space not yet written).
"""

from __future__ import annotations

import hashlib
import os

_EDGE_BYTES = 64 << 10  # the head and the tail that a fingerprint reads
_SAMPLE_BYTES, _SAMPLES = 4 << 10, 8  # plus this many blocks spread between them


def fingerprint(path: str) -> tuple[bytes, bool] | None:
    """A digest of what a file holds now, and whether its last 64 KiB are all zeros.

    Reads the first and last :data:`_EDGE_BYTES` and :data:`_SAMPLES` blocks spread evenly
    between them (about 160 KiB whatever the size, so a 50 GiB file costs no more than a small
    one); the size is part of the digest.  ``None`` when the file cannot be read.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            digest = hashlib.sha256(size.to_bytes(8, "big"))
            digest.update(fh.read(_EDGE_BYTES))
            span = size - 2 * _EDGE_BYTES
            for i in range(_SAMPLES if span > _SAMPLE_BYTES * _SAMPLES else 0):
                fh.seek(_EDGE_BYTES + span * i // _SAMPLES)
                digest.update(fh.read(_SAMPLE_BYTES))
            fh.seek(max(0, size - _EDGE_BYTES))
            tail = fh.read(_EDGE_BYTES)
    except OSError:
        return None
    digest.update(tail)
    return digest.digest(), bool(tail) and tail.count(0) == len(tail)

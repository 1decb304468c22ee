"""Results in the hospital's PACS: a DICOM SR per verdict, a KOS per confirmed rejection.

``sr`` and ``kos`` build the objects (highdicom templates), ``outbox`` keeps them durably until
the PACS has them, ``sender`` delivers them by C-STORE (pynetdicom).  The thread that ties them
together is :mod:`edge_worker.service.pacs_desk`.  See ``docs/pacs.md``.
"""

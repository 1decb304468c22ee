"""Edge worker for radiograph quality control.

Data flows one way: file event -> ingest -> pipeline -> verdict -> publisher.  The composition
root is :mod:`edge_worker.service.daemon`; the command line is :mod:`edge_worker.cli`.
"""

from __future__ import annotations

__version__ = "0.1.0"

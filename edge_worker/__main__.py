"""``python -m edge_worker`` is the ``edge-worker`` command."""

from __future__ import annotations

import sys

from edge_worker.cli import main

sys.exit(main())

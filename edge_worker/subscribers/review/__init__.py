"""The review loop (paper 002, MIQA's two tiers) for the verdicts the dashboard receives.

``flags`` is the closed list of artifact flags (DICOM CID 7011 plus the pack's own codes);
``db`` the tables and their Alembic migrations; ``store`` the typed operations that enforce
the tiers, optimistic concurrency and the audit trail; ``auth`` users, sessions, CSRF and
roles; ``agreement`` how often people agree with the network; ``copies`` the reduced image each
verdict was about, as the worker sent it (``docs/review-copy.md``); ``export`` the reviewed
images and final labels for ``models`` to retrain on (``edge-worker review export``).

Nothing in the worker (watching, judging, publishing) imports this package: it needs the
``review`` extra (SQLAlchemy, Alembic, psycopg, argon2-cffi), which the worker does not.
"""

"""Judging one file: which pack it goes to, the decision and its reasons, the thumbnail."""

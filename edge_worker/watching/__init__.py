"""Watching the modality's folder: when a file is complete, what to do with the ones that cannot be judged, and how the folders stay bounded."""

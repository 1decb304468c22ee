"""Synthetic radiographs with exact ground truth, written as real DICOM files (demo, tests, training)."""

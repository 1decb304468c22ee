"""The lumbar positioning rules as data: one list of rule dicts per view.

Each dict is what a ``rules`` stage of the pack carries and what
:func:`edge_worker.pipeline.measures.parse_rules` validates.  The criteria are the image
evaluation criteria of the lumbar spine projections in Bontrager & Lampignano, *Textbook of
Radiographic Positioning and Related Anatomy* (lumbar spine chapter: AP, lateral and
oblique projections), the textbook standard paper 001 builds its quality control on.

Thresholds sit between the phantoms' good band and their error band
(:mod:`edge_worker.phantoms.lumbar`): AP rotation within 2 deg gives a spinous offset <= 0.04
inter-pedicle distances, 9 deg or more gives >= 0.17; an oblique within 4 deg of 45 puts the
pedicle <= 0.04 body widths from the centre, 16 deg off puts it >= 0.15.
"""

from __future__ import annotations

from typing import Any

BOOK = "Bontrager & Lampignano, Textbook of Radiographic Positioning and Related Anatomy"


def _field(view: str, label: str, segment: str, what: str) -> dict[str, Any]:
    return {
        "code": f"{view.lower()}_{segment}_in_field",
        "measure": "inside_field",
        "segments": [segment],
        "min": 1.0,
        "sentence": f"{what} is cut off or outside the field: centre and collimate to include "
        "T12 down to the sacrum, then repeat the exposure.",
        "criterion": f"{BOOK}, lumbar spine {label}: evaluation criteria, anatomy demonstrated "
        "(lower thoracic vertebrae, L1-L5, sacrum) and collimation",
        "on_fail": "retake",
    }


RULES: dict[str, list[dict[str, Any]]] = {
    "AP": [
        {
            "code": "ap_spinous_midline",
            "measure": "centroid_offset",
            "segments": ["spinous", "pedicle_left", "pedicle_right"],
            "max": 0.10,
            "sentence": "The trunk is rotated: the spinous processes are off the midline between "
            "the pedicles. Lay the patient flat with shoulders and hips level, then repeat.",
            "criterion": f"{BOOK}, lumbar spine AP: evaluation criteria, no rotation (spinous "
            "processes midline, pedicles and sacroiliac joints equidistant from the spine)",
            "on_fail": "retake",
        },
        {
            "code": "ap_column_aligned",
            "measure": "axis_angle",
            "segments": ["body"],
            "max": 8.0,
            "sentence": "The spine is at an angle to the long axis of the image: align the "
            "midsagittal plane with the midline of the table and detector.",
            "criterion": f"{BOOK}, lumbar spine AP: evaluation criteria, position (vertebral "
            "column aligned with the centre of the image receptor)",
            "on_fail": "review",
        },
        _field("AP", "AP", "t12", "T12"),
        _field("AP", "AP", "sacrum", "The sacrum"),
    ],
    "LAT": [
        {
            "code": "lat_disc_spaces_open",
            "measure": "component_count",
            "segments": ["disc"],
            "min": 4.0,
            "sentence": "The disc spaces are closed and the endplates show double contours: the "
            "spine is not parallel to the detector. Support the waist (or angle the tube "
            "caudad) so the spine is horizontal, then repeat.",
            "criterion": f"{BOOK}, lumbar spine lateral: evaluation criteria, intervertebral "
            "disc spaces open (vertebral column parallel to the image receptor)",
            "on_fail": "retake",
        },
        _field("LAT", "lateral", "t12", "T12"),
        _field("LAT", "lateral", "sacrum", "The sacrum"),
    ],
    "OBL": [
        {
            "code": "obl_eye_centred",
            "measure": "centroid_offset",
            "segments": ["pedicle", "body"],
            "max": 0.10,
            "sentence": "The obliquity is wrong: the pedicle (the Scottie dog's eye) is off the "
            "centre of the vertebral body. Rotate the body to 45 degrees from the table, "
            "then repeat.",
            "criterion": f"{BOOK}, lumbar spine oblique (LPO/RPO): evaluation criteria, "
            "correct rotation (pedicle near the centre of the vertebral body, zygapophyseal "
            "joints open)",
            "on_fail": "retake",
        },
        _field("OBL", "oblique", "t12", "T12"),
        _field("OBL", "oblique", "sacrum", "The sacrum"),
    ],
}

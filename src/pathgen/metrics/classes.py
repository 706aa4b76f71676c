"""Nucleus class tables shared by metrics, annotation I/O and the synthesis models.

``NUCLEUS_TYPES`` follows the Lizard / CoNIC order (class 0 is background). ``PANNUKE_TYPES`` follows the
channel order of PanNuke's ``masks.npy`` (channel ``c`` holds class ``c + 1``; channel 5 is background). The
display colours are pathgen's own choice for overlays and QuPath exports; no dataset defines them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathgen.errors import PathgenError


@dataclass(frozen=True)
class NucleusType:
    """One nucleus class: integer id used in class maps, display name, display colour (R, G, B in 0..255)."""

    id: int
    name: str
    color: tuple[int, int, int]


NUCLEUS_TYPES: tuple[NucleusType, ...] = (
    NucleusType(0, "background", (0, 0, 0)),
    NucleusType(1, "neutrophil", (255, 165, 0)),
    NucleusType(2, "epithelial", (220, 20, 60)),
    NucleusType(3, "lymphocyte", (34, 139, 34)),
    NucleusType(4, "plasma", (0, 191, 255)),
    NucleusType(5, "eosinophil", (255, 0, 255)),
    NucleusType(6, "connective", (65, 105, 225)),
)

PANNUKE_TYPES: tuple[NucleusType, ...] = (
    NucleusType(0, "background", (0, 0, 0)),
    NucleusType(1, "neoplastic", (220, 20, 60)),
    NucleusType(2, "inflammatory", (34, 139, 34)),
    NucleusType(3, "connective", (65, 105, 225)),
    NucleusType(4, "dead", (255, 215, 0)),
    NucleusType(5, "epithelial", (255, 140, 0)),
)


def class_names(table: tuple[NucleusType, ...] = NUCLEUS_TYPES) -> dict[int, str]:
    """Map class id to name for ``table``."""
    return {t.id: t.name for t in table}


def class_id(name: str, table: tuple[NucleusType, ...] = NUCLEUS_TYPES) -> int:
    """Class id for a name (case-insensitive); ``PathgenError`` listing the known names otherwise."""
    key = name.strip().lower()
    for t in table:
        if t.name == key:
            return t.id
    known = ", ".join(t.name for t in table)
    raise PathgenError(f"unknown nucleus class {name!r} (known: {known})")

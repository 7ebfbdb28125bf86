"""Exceptions raised by the task suite.

Every data error names where it happened (row index or id, and field) so that a bad line in a user's file can be
found at once, e.g. ``row 17 field 'map_desc': expected exactly one start (1), found 2``.
"""

from __future__ import annotations


class TaskDataError(ValueError):
    """A row of task data is malformed. The message names the row and the field.

    Attributes:
        row: the row index or id (``None`` when the value does not come from a row, e.g. a direct API call).
        field: the name of the offending field.
        reason: what is wrong, without the location prefix.
    """

    def __init__(self, reason: str, *, row: int | str | None = None, field: str | None = None):
        self.row = row
        self.field = field
        self.reason = reason
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)


class UnknownNameError(ValueError):
    """An unknown task or variant name was given."""


class LevelError(ValueError):
    """A level (map side length, or jigsaw grid size) is out of the supported range."""

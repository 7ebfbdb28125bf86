"""Exceptions raised by the task suite.

Every data error names where it happened so that a bad line in a user's file can be found at once: the file and its
1-based line number (as an editor shows them) for JSONL input, the row id for rows in memory, and the field, e.g.
``rows.jsonl line 18 field 'map_desc': expected exactly one start (1), found 2``.
"""

from __future__ import annotations

import os


class TaskDataError(ValueError):
    """A row of task data is malformed. The message names the row (or file and line) and the field.

    Attributes:
        row: the row index or id (``None`` when the value does not come from a row, e.g. a direct API call).
        field: the name of the offending field.
        reason: what is wrong, without the location prefix.
        line: the 1-based line of a JSONL file the row was read from (``None`` for rows in memory).
        path: the file the row was read from.
    """

    def __init__(
        self,
        reason: str,
        *,
        row: int | str | None = None,
        field: str | None = None,
        line: int | None = None,
        path: str | os.PathLike | None = None,
    ):
        self.row = row
        self.field = field
        self.reason = reason
        self.line = line
        self.path = path
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)

    def located(self, *, line: int, path: str | os.PathLike | None = None) -> TaskDataError:
        """The same error placed at ``line`` of the file ``path`` (for errors found while reading a JSONL file)."""
        return TaskDataError(self.reason, row=self.row, field=self.field, line=line, path=path)


class UnknownNameError(ValueError):
    """An unknown task or variant name was given."""


class LevelError(ValueError):
    """A level (map side length, or jigsaw grid size) is out of the supported range."""

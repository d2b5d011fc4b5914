"""Job rows as a backend stores them: their values in one order, their JSON fields as text,
and the rows a writer knows.

A row's values are `ROW_FIELDS` in order; its settings and metadata are JSON texts. A
reader turns stored values into `FleetRow` objects one at a time (`Rows`), parsing each
distinct JSON text once (`loads`); a writer keeps every row of the store it knows
(`KnownRows`), changed in place by its writes and brought up to date with what the other
writers changed since, and writes a JSON field again only when the row holds another
object for it.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Iterator, Sequence
from typing import Any, overload

from jobpulse.store._base import FleetRow

__all__ = ["ROW_FIELDS", "KnownRows", "Rows", "encode", "row_of"]

#: FleetRow's fields in the order a backend stores them (the name first, seq last).
ROW_FIELDS = (*tuple(name for name in FleetRow.__dataclass_fields__ if name != "seq"), "seq")
SETTINGS_INDEX = ROW_FIELDS.index("settings")
METADATA_INDEX = ROW_FIELDS.index("metadata")
_FAILURE_ENDS_INDEX = ROW_FIELDS.index("failure_ends")
_LAST_FAILED_INDEX = ROW_FIELDS.index("last_failed")
_ROW_VALUES = operator.attrgetter(*ROW_FIELDS)

encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@functools.lru_cache(maxsize=4096)
def loads(text: str) -> Any:
    """A JSON field's object, parsed once per distinct text (most rows hold one of a few
    settings and metadata texts) and shared by the rows that hold it: rows' settings and
    metadata are replaced, never changed in place. The same object for the same text also
    tells a reader that a row's settings did not move."""
    return json.loads(text)


@functools.lru_cache(maxsize=1024)
def _ends(text: str) -> tuple[int, ...]:
    return tuple(json.loads(text))


def row_of(values: Sequence[Any], offset: int = 0) -> FleetRow:
    """The FleetRow of stored values: `ROW_FIELDS` from `offset` on."""
    fields = list(values[offset:]) if offset else list(values)
    fields[SETTINGS_INDEX] = loads(fields[SETTINGS_INDEX])
    fields[METADATA_INDEX] = loads(fields[METADATA_INDEX])
    ends = fields[_FAILURE_ENDS_INDEX]
    fields[_FAILURE_ENDS_INDEX] = _ends(ends) if ends != "[]" else ()
    if fields[_LAST_FAILED_INDEX] is not None:
        fields[_LAST_FAILED_INDEX] = bool(fields[_LAST_FAILED_INDEX])
    return FleetRow(*fields)


class Rows(Sequence[FleetRow]):
    """Stored rows read as they are (plain sequences of plain values), each made a
    `FleetRow` when taken: a reader takes them one at a time, so that no more than one is
    alive at once (a thousand of them at once were promoted by the garbage collector, and
    made its full collections more frequent)."""

    __slots__ = ("_offset", "_raw")

    def __init__(self, raw: Sequence[Sequence[Any]], offset: int = 0) -> None:
        self._raw, self._offset = raw, offset

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> FleetRow: ...
    @overload
    def __getitem__(self, index: slice) -> list[FleetRow]: ...
    def __getitem__(self, index: int | slice) -> FleetRow | list[FleetRow]:
        if isinstance(index, slice):
            return [row_of(values, self._offset) for values in self._raw[index]]
        return row_of(self._raw[index], self._offset)

    def __iter__(self) -> Iterator[FleetRow]:
        offset = self._offset
        return (row_of(values, offset) for values in self._raw)


class _Known:
    """A row as the writer last wrote or read it: its id, the row (that a write changes in
    place), and its JSON fields' text with the objects it encodes."""

    __slots__ = ("id", "metadata", "metadata_text", "row", "settings", "settings_text")

    def __init__(self, id: int, row: FleetRow, settings_text: str, metadata_text: str) -> None:
        self.id, self.row = id, row
        self.settings, self.settings_text = row.settings, settings_text
        self.metadata, self.metadata_text = row.metadata, metadata_text


class KnownRows:
    """Every row of the store as one writer knows it: those of seq up to `seq` as they are,
    by name, and the names of their ids. Not thread-safe: the writer's lock guards it."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Know nothing (another store, a prune, a write that failed midway): every row is
        read again at the next write."""
        self._rows: dict[str, _Known] = {}
        self.names: dict[int, str] = {}
        self.seq = -1
        self.generation = -1

    def add(self, id: int, values: Sequence[Any], offset: int = 0) -> None:
        """A row read from the store: its id and stored values (`ROW_FIELDS` from `offset`)."""
        row = row_of(values, offset)
        self._rows[row.name] = _Known(
            id, row, values[offset + SETTINGS_INDEX], values[offset + METADATA_INDEX]
        )
        self.names[id] = row.name

    def row(self, name: str) -> FleetRow | None:
        known = self._rows.get(name)
        return None if known is None else known.row

    def id(self, name: str) -> int:
        return self._rows[name].id

    def get_id(self, name: str) -> int | None:
        known = self._rows.get(name)
        return None if known is None else known.id

    def rows(self) -> Iterator[FleetRow]:
        return (known.row for known in self._rows.values())

    def values(self, row: FleetRow, seq: int, new_id: int | None = None) -> list[Any]:
        """The row's values (`ROW_FIELDS`) at `seq`, its JSON fields encoded only if they
        changed; remembered as written (with `new_id` for a row new to the store)."""
        row.seq = seq
        values = list(_ROW_VALUES(row))
        known = self._rows.get(row.name)
        if known is not None and known.settings is row.settings:
            values[SETTINGS_INDEX] = known.settings_text
        else:
            values[SETTINGS_INDEX] = encode(row.settings)
        if known is not None and known.metadata is row.metadata:
            values[METADATA_INDEX] = known.metadata_text
        else:  # a new copy with every run, most often empty
            values[METADATA_INDEX] = encode(row.metadata) if row.metadata else "{}"
        ends = row.failure_ends
        values[_FAILURE_ENDS_INDEX] = encode(ends) if ends else "[]"
        if known is None:
            assert new_id is not None, "a row new to the store needs an id"
            self._rows[row.name] = _Known(
                new_id, row, values[SETTINGS_INDEX], values[METADATA_INDEX]
            )
            self.names[new_id] = row.name
        else:
            known.settings, known.settings_text = row.settings, values[SETTINGS_INDEX]
            known.metadata, known.metadata_text = row.metadata, values[METADATA_INDEX]
        return values

    def __contains__(self, name: object) -> bool:
        return name in self._rows

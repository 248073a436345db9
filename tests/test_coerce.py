"""Driver values into canonical Arrow columns (decom/coerce.py): a column Arrow can take as it is
must come out exactly as the value-by-value conversion makes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from decom.coerce import _to_str, _to_timestamp, to_arrow

STAMP = pa.timestamp("us", tz="UTC")
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))
naive_or_aware = st.one_of(moments, st.builds(lambda m, tz: m.replace(tzinfo=tz), moments, offsets))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), naive_or_aware), max_size=30))
def test_datetimes_naive_or_aware_convert_as_the_converter_does(values: list[datetime | None]) -> None:
    assert to_arrow(values, STAMP).equals(pa.array([_to_timestamp(v) for v in values], STAMP))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.lists(st.one_of(st.none(), st.text()), max_size=30),
                 st.lists(st.one_of(st.none(), st.integers()), max_size=30)))  # ids: int, even past 64 bits
def test_text_and_integer_ids_convert_as_the_converter_does(values: list[str | None] | list[int | None]) -> None:
    assert to_arrow(values, pa.string()).equals(pa.array([_to_str(v) for v in values], pa.string()))


def test_a_column_of_mixed_driver_types_is_still_converted_value_by_value() -> None:
    # MariaDB BINARY text, a float id, a DATETIME read into a text column, unix seconds, SQLite text
    assert to_arrow([b"caf\xc3\xa9", 3.0, datetime(2024, 5, 1, 8, 30), None], pa.string()).to_pylist() == \
        ["café", "3", "2024-05-01T08:30:00", None]
    assert to_arrow([datetime(2024, 5, 1, 8, 30), 1714552200, "2024-05-01 08:30:00+02:00"], STAMP).to_pylist() == \
        [datetime(2024, 5, 1, 8, 30, tzinfo=UTC), datetime(2024, 5, 1, 8, 30, tzinfo=UTC),
         datetime(2024, 5, 1, 6, 30, tzinfo=UTC)]

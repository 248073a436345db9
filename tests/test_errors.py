"""The one-line detail decom puts after a library's error: never a traceback, never SQL, never empty."""

from __future__ import annotations

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from decom.errors import first_line


def test_a_database_error_gives_the_drivers_own_line_without_the_sql() -> None:
    engine = sa.create_engine("sqlite://")
    with pytest.raises(SQLAlchemyError) as caught, engine.connect() as conn:
        conn.execute(sa.text("SELECT secret_column FROM no_such_table"))
    assert "\n" in str(caught.value)  # SQLAlchemy's wrapper adds the SQL and a help link on more lines
    assert first_line(caught.value) == "no such table: no_such_table"


@pytest.mark.parametrize("message", ["", "\n", "  \n\t"])
def test_an_exception_without_a_message_is_named_by_its_type(message: str) -> None:
    assert first_line(pa.ArrowInvalid(message)) == "ArrowInvalid"
    assert first_line(OSError(message)) == "OSError"


def test_leading_blank_lines_and_padding_are_skipped() -> None:
    assert first_line(ValueError("\n  Parquet magic bytes not found  \nsecond line")) == \
        "Parquet magic bytes not found"

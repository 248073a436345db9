"""Field checks shared by the plan's models (decom/plan.py and decom/plan_remote.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic.functional_validators import AfterValidator


def must(test: Callable[[str], object], message: str) -> AfterValidator:
    """A string field that fails with `message` unless `test(value)` is true."""
    def check(value: str) -> str:
        if not test(value):
            raise ValueError(message)
        return value
    return AfterValidator(check)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]

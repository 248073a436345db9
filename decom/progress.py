"""Progress bars for long work: tqdm on a terminal, silent off a TTY or with --quiet.

tqdm is imported only when a bar is shown. Its import brings importlib.metadata for its version,
which `decom verify` otherwise never loads: a third of `import decom.cli` on a slow machine."""

from __future__ import annotations

import sys
from typing import Any


class _NoBar:
    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Progress:
    """Hands out progress bars; `enabled` is decided once, by the CLI."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def bar(self, total: float | None, desc: str, unit: str = "it", **kwargs: Any) -> Any:
        if not self.enabled:
            return _NoBar()
        from tqdm import tqdm

        scale = unit == "B"
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                    leave=False, file=sys.stderr, dynamic_ncols=True, **kwargs)


QUIET = Progress(enabled=False)

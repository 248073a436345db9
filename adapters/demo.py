"""The demo legacy EDM (`decom demo`, decom.demo.generator) read through the generic SQL adapter.

Nothing here but the choice of mapping: the shipped demo_mapping.toml, unless the plan's
source options name another `mapping` file.
"""

from __future__ import annotations

from pathlib import Path

from decom.adapters.sql_generic import SqlGenericAdapter

from decom.adapter import SourceConfig

SHIPPED_MAPPING = Path(__file__).with_name("demo_mapping.toml")


class DemoAdapter(SqlGenericAdapter):
    """The demo ministry document flow (legacy schema v3)."""

    name = "demo"

    def __init__(self, config: SourceConfig, mapping_path: Path | None = None) -> None:
        if mapping_path is None and not config.options.get("mapping"):
            mapping_path = SHIPPED_MAPPING
        super().__init__(config, mapping_path)

"""The LegacyAdapter protocol every source system implements, its capabilities, and the registry.

Built-in adapters are registered under the entry-point group `decom.adapters` exactly like
third-party ones, so an adapter shipped in another package is a first-class citizen.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import pyarrow as pa

from decom.errors import UserError

ENTRY_POINT_GROUP = "decom.adapters"


class Capability(enum.StrEnum):
    """What an adapter can do beyond reading. Stages check these instead of the adapter's name."""

    CONTENT_FILES = "content_files"      # bytes live as files under a content root
    CONTENT_BLOBS = "content_blobs"      # bytes live in the database
    WORKFLOWS = "workflows"              # has cases / workflow runs / tasks
    SIGNATURES = "signatures"            # records electronic signatures or seals
    LAST_LOGIN = "last_login"            # knows when each user last logged in
    DISABLE_USERS = "disable_users"      # can disable an account (lock-down)
    REVOKE_WRITE = "revoke_write"        # can revoke write rights (read-only mode)
    REASSIGN_CASES = "reassign_cases"    # can move a case or task to a new owner


@dataclass(frozen=True)
class SourceConfig:
    """What an adapter is built from: the plan's [source] table with secrets already resolved."""

    adapter: str
    url: str
    content_root: Path | None
    plan_dir: Path
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class LegacyAdapter(Protocol):
    """A legacy EDM system seen through the canonical model (`decom.model`)."""

    name: str
    capabilities: frozenset[Capability]

    def describe(self) -> str:
        """One line naming the system and where it is, with no secret in it."""

    def entities(self) -> tuple[str, ...]:
        """Canonical entities this source provides (a subset of decom.model.ENTITY_NAMES)."""

    def count(self, entity: str) -> int:
        """Number of rows of an entity, computed by the database."""

    def aggregate(self, entity: str, column: str, func: str) -> Any:
        """`func` (sum | max | min | count) of a canonical column, computed by the database."""

    def breakdown(self, entity: str, by: str, *, year: bool = False, value: str | None = None,
                  join: tuple[str, str] | None = None) -> dict[str, float]:
        """Count (or sum of `value`) per value (or year) of `by`, computed by the database."""

    def read(self, entity: str, batch_rows: int = 10_000) -> Iterator[pa.RecordBatch]:
        """Stream an entity as record batches in the canonical schema, ordered by its key."""

    def open_content(self, version: Mapping[str, Any]) -> BinaryIO:
        """Open the bytes of one version row (a dict of canonical `versions` columns) for streaming.

        Raises FileNotFoundError when the record points at content that is not there.
        """

    def open_many(self, versions: Sequence[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], BinaryIO | None]]:
        """(version, stream, or None when its content is missing) for many versions, in order. The
        backup calls it from several threads at once, each call with its own versions."""

    def content_batches(self, versions: Sequence[Mapping[str, Any]],
                        max_bytes: int) -> Iterator[tuple[Sequence[Mapping[str, Any]], pa.Array]] | None:
        """The whole bytes of many versions, batch by batch in order: (versions, Arrow binary array with
        one value per version, null when missing), each batch about `max_bytes` of recorded size.

        Optional (the backup looks it up with getattr): a source that can hand over many blobs at
        once into Arrow implements it; None, or no such method, means the backup streams each
        version through open_many.
        """

    def warm_up(self) -> None:
        """Optional (looked up with getattr): called as a backup starts, returns at once, and opens in
        the background what the content reads will need (connections); close() closes it too."""

    def content_files(self) -> Iterator[tuple[str, int]]:
        """Every file under the content root as (relative POSIX path, size); empty for blob sources."""

    def content_ref_of_file(self, relative_path: str) -> str | None:
        """The content_ref a file under the content root would have, or None if it is not content."""

    def actions(self) -> tuple[str, ...]:
        """Names of the changes this adapter can make (disable_user, revoke_write, reassign_case...)."""

    def probe(self, action: str, params: Mapping[str, Any]) -> Any:
        """The current state an action would change, for one target (None when there is no such row)."""

    def perform(self, action: str, params: Mapping[str, Any]) -> int:
        """Make the change for one target in its own transaction; returns rows changed (0: already so)."""

    def restore(self, action: str, params: Mapping[str, Any], before: Any) -> int:
        """Put back the state `probe` saw before the change (used by `decom undo`)."""

    def close(self) -> None:
        """Release connections."""


def available_adapters() -> dict[str, Any]:
    """Entry points of the adapters by name (load() gives the class), from the `decom.adapters` group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def adapter_names() -> list[str]:
    return sorted(available_adapters())


def open_adapter(config: SourceConfig) -> LegacyAdapter:
    """Build the adapter the plan names, or raise a UserError naming the known ones."""
    registry = available_adapters()
    if config.adapter not in registry:
        known = ", ".join(sorted(registry)) or "none installed"
        raise UserError(f"unknown adapter {config.adapter!r} (known: {known})")
    adapter_class = registry[config.adapter].load()
    adapter: LegacyAdapter = adapter_class(config)
    return adapter

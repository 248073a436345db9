"""The checkpoint store: which step of which stage is done, with its inputs and outputs.

SQLite in the plan's state folder by default; any SQLAlchemy URL (a team's PostgreSQL) works.
A step is marked `running` before it starts and `done` together with its outputs in one
transaction, so a crash leaves it `running`, and resume redoes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from decom.errors import UserError, first_line

metadata = sa.MetaData()

plans_table = sa.Table(
    "decom_plans", metadata,
    sa.Column("plan_name", sa.String(200), primary_key=True),
    sa.Column("plan_sha256", sa.String(64), nullable=False),
    sa.Column("first_run_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

runs_table = sa.Table(
    "decom_runs", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("plan_name", sa.String(200), nullable=False, index=True),
    sa.Column("plan_sha256", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("operator", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("message", sa.Text),
)

stages_table = sa.Table(
    "decom_stages", metadata,
    sa.Column("plan_name", sa.String(200), primary_key=True),
    sa.Column("stage", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

steps_table = sa.Table(
    "decom_steps", metadata,
    sa.Column("plan_name", sa.String(200), primary_key=True),
    sa.Column("stage", sa.String(100), primary_key=True),
    sa.Column("step_id", sa.String(200), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("outputs", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StepRecord:
    stage: str
    step_id: str
    seq: int
    status: str  # running | done | failed
    attempts: int
    description: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None


class CheckpointStore:
    """Checkpoints of the plans kept in one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = sa.create_engine(url, future=True)
            metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise UserError(f"checkpoint store {sa.engine.make_url(url).render_as_string(hide_password=True)}"
                            f" cannot be opened: {first_line(exc)}") from None

    @classmethod
    def in_folder(cls, folder: Path) -> CheckpointStore:
        folder.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{folder / 'checkpoints.sqlite'}")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # --- plan hash ------------------------------------------------------------------------------

    def recorded_plan_hash(self, plan_name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(plans_table.c.plan_sha256)
                                .where(plans_table.c.plan_name == plan_name)).scalar()

    def record_plan_hash(self, plan_name: str, sha256: str) -> None:
        with self.engine.begin() as conn:
            updated = conn.execute(plans_table.update().where(plans_table.c.plan_name == plan_name)
                                   .values(plan_sha256=sha256, updated_at=now())).rowcount
            if not updated:
                conn.execute(plans_table.insert().values(plan_name=plan_name, plan_sha256=sha256,
                                                         first_run_at=now(), updated_at=now()))

    # --- runs -------------------------------------------------------------------------------------

    def start_run(self, run_id: str, plan_name: str, plan_sha256: str, operator: str, host: str,
                  pid: int) -> None:
        with self.engine.begin() as conn:
            # A run still marked running while we hold the lock was killed: say so.
            conn.execute(runs_table.update()
                         .where(runs_table.c.plan_name == plan_name, runs_table.c.status == "running")
                         .values(status="crashed", message="the process stopped without finishing"))
            conn.execute(runs_table.insert().values(
                run_id=run_id, plan_name=plan_name, plan_sha256=plan_sha256, status="running",
                operator=operator, host=host, pid=pid, started_at=now()))

    def finish_run(self, run_id: str, status: str, message: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs_table.update().where(runs_table.c.run_id == run_id)
                         .values(status=status, finished_at=now(), message=message))

    def runs(self, plan_name: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs_table).where(runs_table.c.plan_name == plan_name)
                                .order_by(runs_table.c.started_at)).mappings().all()
        return [dict(r) for r in rows]

    # --- stages -----------------------------------------------------------------------------------

    def set_stage(self, plan_name: str, stage: str, status: str) -> None:
        values: dict[str, Any] = {"status": status}
        if status == "running":
            values["started_at"] = now()
        else:
            values["finished_at"] = now()
        with self.engine.begin() as conn:
            updated = conn.execute(stages_table.update().where(stages_table.c.plan_name == plan_name,
                                                               stages_table.c.stage == stage)
                                   .values(**values)).rowcount
            if not updated:
                conn.execute(stages_table.insert().values(plan_name=plan_name, stage=stage, **values))

    def stage_status(self, plan_name: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(stages_table.c.stage, stages_table.c.status)
                                .where(stages_table.c.plan_name == plan_name)).all()
        return {stage: status for stage, status in rows}

    # --- steps ------------------------------------------------------------------------------------

    def get_step(self, plan_name: str, stage: str, step_id: str) -> StepRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(steps_table).where(
                steps_table.c.plan_name == plan_name, steps_table.c.stage == stage,
                steps_table.c.step_id == step_id)).mappings().first()
        return _record(row) if row else None

    def begin_step(self, plan_name: str, stage: str, step_id: str, seq: int, description: str,
                   inputs: dict[str, Any], run_id: str) -> int:
        """Mark a step running; returns its attempt number (2 and up means a redo after a crash)."""
        with self.engine.begin() as conn:
            key = (steps_table.c.plan_name == plan_name, steps_table.c.stage == stage,
                   steps_table.c.step_id == step_id)
            attempts = conn.execute(sa.select(steps_table.c.attempts).where(*key)).scalar()
            values = dict(seq=seq, status="running", description=description,
                          inputs=json.dumps(inputs, sort_keys=True, default=str), outputs=None, error=None,
                          run_id=run_id, started_at=now(), finished_at=None)
            if attempts is None:
                conn.execute(steps_table.insert().values(plan_name=plan_name, stage=stage, step_id=step_id,
                                                         attempts=1, **values))
                return 1
            conn.execute(steps_table.update().where(*key).values(attempts=attempts + 1, **values))
            return int(attempts) + 1

    def finish_step(self, plan_name: str, stage: str, step_id: str, outputs: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(steps_table.update().where(
                steps_table.c.plan_name == plan_name, steps_table.c.stage == stage,
                steps_table.c.step_id == step_id).values(
                status="done", outputs=json.dumps(outputs, sort_keys=True, default=str), finished_at=now()))

    def fail_step(self, plan_name: str, stage: str, step_id: str, error: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(steps_table.update().where(
                steps_table.c.plan_name == plan_name, steps_table.c.stage == stage,
                steps_table.c.step_id == step_id).values(status="failed", error=error, finished_at=now()))

    def mark_step(self, plan_name: str, stage: str, step_id: str, status: str) -> None:
        """Set a step's status (e.g. `undone`): a step not `done` is run again by the next run."""
        with self.engine.begin() as conn:
            conn.execute(steps_table.update().where(
                steps_table.c.plan_name == plan_name, steps_table.c.stage == stage,
                steps_table.c.step_id == step_id).values(status=status, finished_at=now()))

    def steps(self, plan_name: str, stage: str | None = None) -> list[StepRecord]:
        query = sa.select(steps_table).where(steps_table.c.plan_name == plan_name)
        if stage is not None:
            query = query.where(steps_table.c.stage == stage)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(steps_table.c.stage, steps_table.c.seq)).mappings().all()
        return [_record(r) for r in rows]


def _record(row: Any) -> StepRecord:
    return StepRecord(
        stage=row["stage"], step_id=row["step_id"], seq=row["seq"], status=row["status"],
        attempts=row["attempts"], description=row["description"], inputs=json.loads(row["inputs"]),
        outputs=json.loads(row["outputs"]) if row["outputs"] else None, error=row["error"],
        started_at=row["started_at"], finished_at=row["finished_at"])

"""Prefect artifacts: tables per level, progress while blocks complete, run reports."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(*parts: str | int) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) from free text."""
    text = "-".join(str(p) for p in parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")[:100]


def publish_level_table(name: str, row: dict[str, Any]) -> UUID:
    level = row["level"]
    table = [{k: (" x ".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()}]
    return create_table_artifact(
        table=table,
        key=artifact_key(name, "level", level),
        description=f"Pyramid level {level} of {name}: shape, spacing, chunks, bytes, time",
    )


class ProgressArtifact:
    """A progress artifact updated as blocks complete (at most every 1 %)."""

    def __init__(self, name: str, total: int, description: str) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._shown = 0.0
        self.id = create_progress_artifact(progress=0.0, key=artifact_key(name, "progress"), description=description)

    def advance(self, count: int = 1) -> None:
        self.done += count
        progress = 100.0 * self.done / self.total
        if progress - self._shown >= 1.0 or self.done >= self.total:
            update_progress_artifact(artifact_id=self.id, progress=min(progress, 100.0))
            self._shown = progress


def publish_report(name: str, markdown: str, description: str) -> UUID:
    return create_markdown_artifact(markdown=markdown, key=artifact_key(name, "report"), description=description)

"""Fixtures of the observability tests."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from mxrc.obs.logs import LogPipeline, LogSettings


@pytest.fixture
def pipeline_lines() -> Iterator[tuple[LogPipeline, io.StringIO]]:
    """A running pipeline writing ECS lines into a string (read it after ``stop()``)."""
    out = io.StringIO()
    pipeline = LogPipeline(
        LogSettings(stderr="ecs", journald="off"), process_name="mxrc-test", stderr=out
    )
    with pipeline:
        yield pipeline, out

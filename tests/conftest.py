"""Shared fixtures: where the real data lives (``../shared/data`` beside the checkout)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Return the real-data directory (``$QAC_SHARED_DATA`` or ``../shared/data``)."""
    env = os.environ.get("QAC_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.fail(f"real data not found at {path} (set QAC_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def aol_log(shared_data: Path) -> Path:
    return shared_data / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz"


def completion_points(log_path: Path, since: str, until: str, n: int) -> list:
    """The first ``n`` real completion points (DESIGN.md protocol, seed 0) of ``[since, until)``."""
    from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions

    log = read_aol_log(log_path, since=since, until=until)
    points = make_points(split_sessions(log.events, SessionConfig()), seed=0)
    assert len(points) > n, f"only {len(points)} points in {since}..{until}"
    return points[:n]


# A slice of the real shared log keeps the build to a few seconds: two weeks to build from, the
# following day to ask about.
BUILD_SINCE, BUILD_UNTIL, ASK_UNTIL = "2006-03-01", "2006-03-15", "2006-03-16"


@pytest.fixture(scope="session")
def small_artifacts(tmp_path_factory, aol_log) -> Path:
    """Completion artifacts built from BUILD_SINCE..BUILD_UNTIL of the shared log, once per test run
    (shared by the end-to-end tests that start real servers)."""
    from qac.build import build_completion

    out = tmp_path_factory.mktemp("small-artifacts") / "artifacts"
    build_completion(aol_log, out, since=BUILD_SINCE, until=BUILD_UNTIL, progress=False)
    return out

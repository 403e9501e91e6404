"""Shared test setup: the repo root on sys.path (tests import the scripts; scripts never import
each other) and the real data beside the project, which CI requires (GENFUSION_REQUIRE_DATA=1)."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))


def shared_path(relative):
    """A path under ../shared; skips the test when absent, or fails when GENFUSION_REQUIRE_DATA=1."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is absent (it sits beside the project; see README)"
        if os.environ.get("GENFUSION_REQUIRE_DATA") == "1":
            pytest.fail(message + " and GENFUSION_REQUIRE_DATA=1")
        pytest.skip(message)
    return path


@pytest.fixture
def orchard_real():
    return shared_path("data/orchard-real")


@pytest.fixture
def paper_table1():
    return shared_path("paper/table1.csv")

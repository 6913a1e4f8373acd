import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub


@pytest.fixture(scope="session")
def shapes_path():
    """The shipped shapes model (STEER_TEST_MODEL can point at another shapes folder)."""
    return os.environ.get("STEER_TEST_MODEL", "shapes")


@pytest.fixture(scope="session")
def shapes_editor(shapes_path):
    from sampler.editor import Editor

    return Editor(shapes_path)

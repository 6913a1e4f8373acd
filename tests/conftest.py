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


# the tiny rectified-flow pipelines (tests/tiny_flow.py), each test module building its own
@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    from sampler.editor import Editor
    from tiny_flow import tiny_sd3_pipeline

    return Editor(tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3")), device="cpu")


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    from sampler.editor import Editor
    from tiny_flow import tiny_flux_pipeline

    return Editor(tiny_flux_pipeline(tmp_path_factory.mktemp("flux")), device="cpu")


@pytest.fixture(params=["sd3", "flux"])
def flow_editor(request):
    """Each test taking it runs on the tiny SD3 and the tiny FLUX."""
    return request.getfixturevalue(request.param)

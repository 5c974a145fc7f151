"""Shared fixtures. Every test runs offline: nothing may reach a model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from trdq.models.loader import load_model  # noqa: E402


@pytest.fixture(scope="session")
def shapes_t2i():
    """The shipped text-to-image pipeline, loaded once for the whole session."""
    return load_model("shapes-t2i")

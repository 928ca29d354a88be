"""Shared test setup: a per-session render cache, so tests never touch ~/.cache."""

import os

import pytest


def pytest_configure(config):
    if "LITLAB_CACHE" not in os.environ:
        import tempfile
        os.environ["LITLAB_CACHE"] = tempfile.mkdtemp(prefix="litlab-test-cache-")


@pytest.fixture(scope="session")
def tok():
    from litlab.data.tokenizer import Tokenizer
    return Tokenizer()

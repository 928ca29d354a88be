"""Shared test setup: fast-compiling XLA and a per-session cache, so tests never touch ~/.cache."""

import os

import pytest


def pytest_configure(config):
    # Tests are dominated by XLA compile time on 2 cores; skipping backend optimizations roughly
    # halves it. Subprocesses (CLI, multi-device, multi-host tests) inherit the same flags.
    if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    if "LITLAB_CACHE" not in os.environ:
        import tempfile
        os.environ["LITLAB_CACHE"] = tempfile.mkdtemp(prefix="litlab-test-cache-")


@pytest.fixture(scope="session")
def tok():
    from litlab.data.tokenizer import Tokenizer
    return Tokenizer()

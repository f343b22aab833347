"""Fixtures for tests that run the command line with Prefect's temporary server."""

import pytest


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """A PREFECT_HOME of the module's own: its database holds only this module's runs."""
    return tmp_path_factory.mktemp("prefect-home")

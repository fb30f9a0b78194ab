"""Starts the local Google Cloud stand-ins once per test session, before test modules are imported
(google-auth reads GCE_METADATA_HOST at import time), and stops them at the end."""

import os
import tempfile

import pytest

from tests.harness import PROJECT, LocalServices, point_beam_bigquery_at

_services = None


def pytest_configure(config):
    global _services
    os.environ["CLOUDSDK_CONFIG"] = tempfile.mkdtemp(prefix="gcloud-config-")  # no real credentials
    _services = LocalServices().start()
    os.environ.update(_services.env)
    point_beam_bigquery_at(_services.env["BIGQUERY_EMULATOR_HOST"])


def pytest_unconfigure(config):
    if _services:
        _services.stop()


@pytest.fixture(scope="session")
def services():
    return _services


@pytest.fixture(scope="session")
def project():
    return PROJECT

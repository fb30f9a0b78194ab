"""Starts the local Google Cloud stand-ins once per test session, before test modules are imported
(google-auth reads GCE_METADATA_HOST at import time), and stops them at the end.

`make test` runs the files in two pytest-xdist workers (`-n 2 --dist loadgroup`): the emulators are started
once, by the controller, and each worker gets their endpoints. A file's tests stay together in one worker
(its module fixtures are built once), and files that write the same emulator resources share a group."""

import json
import os
import tempfile
from types import SimpleNamespace

import pytest

from tests.harness import PROJECT, LocalServices, point_beam_bigquery_at

_services = None
# Files that load the same BigQuery table (sre.slo_status: test_slo_report imports test_slo_queries' fixture)
# share a group. The serving loop (about 4 minutes) joins the largest file's group: xdist hands out the groups
# with the most tests first, so the loop starts at once and runs beside everything else, not after it.
_SHARED_GROUPS = {
    "test_slo_queries": "sre.slo_status",
    "test_slo_report": "sre.slo_status",
    "test_serving_loop": "test_window_features",
}
_FIRST = "tests.test_serving_loop"


def pytest_configure(config):
    global _services
    os.environ["CLOUDSDK_CONFIG"] = tempfile.mkdtemp(prefix="gcloud-config-")  # no real credentials
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # an xdist worker: the controller runs the emulators
        _services = SimpleNamespace(env=json.loads(worker["local_services_env"]))
    else:
        _services = LocalServices().start()
    os.environ.update(_services.env)
    point_beam_bigquery_at(_services.env["BIGQUERY_EMULATOR_HOST"])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist, in the controller: hands a starting worker the emulators' endpoints."""
    node.workerinput["local_services_env"] = json.dumps(_services.env)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    # the loop first within its group (see _SHARED_GROUPS)
    items.sort(key=lambda item: item.module.__name__ != _FIRST)
    for item in items:
        name = item.module.__name__.rsplit(".", 1)[-1]
        item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(name, name)))


def pytest_unconfigure(config):
    if isinstance(_services, LocalServices):
        _services.stop()


@pytest.fixture(scope="session")
def services():
    return _services


@pytest.fixture(scope="session")
def project():
    return PROJECT

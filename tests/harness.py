"""Real local stand-ins for Google Cloud, started once per test session (or by hand: `make services`).

- Pub/Sub and Bigtable: the emulators shipped with the Google Cloud SDK.
- BigQuery: `bqemulator`, GCS: `gcp-storage-emulator`, both from .venv-services (scripts/bootstrap.sh).
- A minimal GCE metadata server so google-auth resolves (fake) credentials in every process, the
  pipeline's worker processes included, instead of prompting for a login.

All listen on 127.0.0.1 on free ports; each is stopped by its own pid (its process group).
"""

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES_BIN = ROOT / ".venv-services" / "bin"
PROJECT = "local-project"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sdk_root():
    gcloud = shutil.which("gcloud")
    if not gcloud:
        raise RuntimeError("gcloud not found: the Pub/Sub and Bigtable emulators come with the Google Cloud SDK")
    out = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    """Answers what google-auth asks the GCE metadata server: a ping, project id, a token."""

    def do_GET(self):  # noqa: N802 - http.server API
        path = self.path.split("?")[0]
        if path.endswith("/token"):
            body = json.dumps({"access_token": "local-test-token", "expires_in": 3600, "token_type": "Bearer"})
        elif path.endswith("/project/project-id"):
            body = PROJECT
        elif path.endswith("/service-accounts/default/") or path.endswith("/email"):
            body = (
                json.dumps(
                    {"email": "local@local-project.iam.gserviceaccount.com", "scopes": [], "aliases": ["default"]}
                )
                if path.endswith("/")
                else "local@local-project.iam.gserviceaccount.com"
            )
        elif path.endswith("/scopes"):
            body = "https://www.googleapis.com/auth/cloud-platform"
        else:
            body = ""
        data = body.encode()
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _wait(check, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become ready within {timeout}s")


def _http_ok(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def _tcp_open(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def stop_process_group(proc, timeout):
    """Ends a process started with start_new_session=True and everything it started: SIGTERM to its group,
    SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class LocalServices:
    def __init__(self):
        self.workdir = Path(tempfile.mkdtemp(prefix="local-services-"))
        self.env = {}
        self._procs = []
        self._metadata = None

    def _spawn(self, name, argv, env=None):
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=self.workdir,
        )
        self._procs.append((name, proc))
        return proc

    def start(self):
        sdk = sdk_root()
        ports = {name: free_port() for name in ("pubsub", "bigtable", "bq_rest", "bq_grpc", "gcs")}

        self._spawn(
            "pubsub",
            [
                str(sdk / "platform/pubsub-emulator/bin/cloud-pubsub-emulator"),
                "--host=127.0.0.1",
                f"--port={ports['pubsub']}",
            ],
        )
        self._spawn(
            "bigtable",
            [
                str(sdk / "platform/bigtable-emulator/cbtemulator"),
                "-host",
                "127.0.0.1",
                "-port",
                str(ports["bigtable"]),
            ],
        )
        self._spawn(
            "bigquery",
            [
                str(SERVICES_BIN / "bqemulator"),
                "start",
                "--rest-host",
                "127.0.0.1",
                "--rest-port",
                str(ports["bq_rest"]),
                "--grpc-host",
                "127.0.0.1",
                "--grpc-port",
                str(ports["bq_grpc"]),
                "--project",
                PROJECT,
            ],
        )
        self._spawn(
            "gcs",
            [
                str(SERVICES_BIN / "gcp-storage-emulator"),
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["gcs"]),
                "--in-memory",
            ],
        )

        self._metadata = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MetadataHandler)
        threading.Thread(target=self._metadata.serve_forever, daemon=True).start()
        metadata_host = f"127.0.0.1:{self._metadata.server_address[1]}"

        try:
            _wait(lambda: _http_ok(f"http://127.0.0.1:{ports['pubsub']}/"), "Pub/Sub emulator")
            _wait(lambda: _tcp_open(ports["bigtable"]), "Bigtable emulator")
            _wait(
                lambda: _http_ok(f"http://127.0.0.1:{ports['bq_rest']}/bigquery/v2/projects/{PROJECT}/datasets"),
                "BigQuery emulator",
            )
            _wait(lambda: _tcp_open(ports["gcs"]), "GCS emulator")
        except RuntimeError as e:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.workdir.glob("*.log")
            )
            self.stop()
            raise RuntimeError(f"{e}\n{logs}") from None

        self.env = {
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{ports['pubsub']}",
            "BIGTABLE_EMULATOR_HOST": f"127.0.0.1:{ports['bigtable']}",
            "BIGQUERY_EMULATOR_HOST": f"http://127.0.0.1:{ports['bq_rest']}",
            "BIGQUERY_STORAGE_EMULATOR_HOST": f"127.0.0.1:{ports['bq_grpc']}",  # Storage Read API (gRPC)
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{ports['gcs']}",
            "GCE_METADATA_HOST": metadata_host,
            "GCE_METADATA_IP": metadata_host,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }
        return self

    def stop(self):
        for _name, proc in reversed(self._procs):
            stop_process_group(proc, 10)
        self._procs = []
        if self._metadata:
            self._metadata.shutdown()
            self._metadata = None


def point_beam_bigquery_at(emulator_url):
    """Beam's internal BigQuery client (table creation, load jobs) has no endpoint option: its base URL is
    a class attribute. Affects this process only.

    And a DIRECT_READ ends by deleting the temporary datasets Beam labelled, listed with a label filter
    that the emulator ignores: it lists every dataset, so each read deleted them all, the tables of a test
    writing beside it in the other worker included (whose streaming inserts then retried for good). Here
    the listing is filtered as BigQuery filters it: Beam labels only the datasets it creates, all named
    `beam_temp_dataset_...`."""
    from apache_beam.io.gcp import bigquery_tools
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client, bigquery_v2_messages

    bigquery_v2_client.BigqueryV2.BASE_URL = f"{emulator_url}/bigquery/v2/"
    wrapper = bigquery_tools.BigQueryWrapper
    beam_clean_up = wrapper._clean_up_beam_labelled_temporary_datasets
    if getattr(beam_clean_up, "filters_by_name", False):
        return

    def clean_up(self, project_id, dataset_id=None, table_id=None, labels=None):
        if labels is None or self.is_user_configured_dataset():
            return beam_clean_up(self, project_id, dataset_id, table_id, labels)
        listed = self.client.datasets.List(bigquery_v2_messages.BigqueryDatasetsListRequest(projectId=project_id))
        for dataset in listed.datasets:
            if dataset.datasetReference.datasetId.startswith(wrapper.TEMP_DATASET):
                self._delete_dataset(project_id, dataset.datasetReference.datasetId, True)

    clean_up.filters_by_name = True
    wrapper._clean_up_beam_labelled_temporary_datasets = clean_up


def point_beam_bigquery_storage_at(host_port):
    """Beam builds the Storage Read API client as `BigQueryReadClient()`, with no endpoint option, and the
    client's gRPC transport opens a TLS channel: its `create_channel` (a class method) is replaced by one that
    opens an insecure channel to the emulator's gRPC port. Affects this process only; returns the original,
    for `restore_beam_bigquery_storage`."""
    import grpc
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports.grpc import BigQueryReadGrpcTransport

    original = BigQueryReadGrpcTransport.__dict__["create_channel"]
    BigQueryReadGrpcTransport.create_channel = classmethod(
        lambda cls, *args, **kwargs: grpc.insecure_channel(host_port)
    )
    return original


def restore_beam_bigquery_storage(original):
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports.grpc import BigQueryReadGrpcTransport

    BigQueryReadGrpcTransport.create_channel = original


def main():
    services = LocalServices().start()
    print("Local services running. In another shell:")
    for k, v in services.env.items():
        print(f"export {k}={v}")
    print("BigQuery REST:", services.env["BIGQUERY_EMULATOR_HOST"], f"(project {PROJECT}). Ctrl-C stops all.")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        services.stop()


if __name__ == "__main__":
    sys.exit(main())

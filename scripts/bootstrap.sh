#!/usr/bin/env bash
# Installs everything the pipelines and tests need into two virtualenvs, from the lock files:
#   .venv           the project (requirements.lock), test tools (requirements-dev.txt), this package (editable)
#   .venv-services  the BigQuery and GCS emulators (requirements-services.lock), kept apart so their pins
#                   never constrain the project's.
# Re-running is cheap: each venv is rebuilt only when its lock file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip --version >/dev/null 2>&1 || { echo "bootstrap: python3 with pip is required" >&2; exit 1; }
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
UV="$(command -v uv || echo "python3 -m uv")"

install_venv() {  # venv lock [extra pip args...]
  local venv=$1 lock=$2; shift 2
  local stamp="$venv/.lock.sha256" want
  want=$(cat "$lock" setup.py requirements-dev.txt | sha256sum | cut -d" " -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  echo "bootstrap: installing $venv from $lock"
  $UV venv --quiet --allow-existing -p 3.11 "$venv"
  # --compile-bytecode: the .pyc files at install (as pip writes them), so that no process compiles the
  # libraries' sources on import where PYTHONDONTWRITEBYTECODE is set (9 s an import of Beam and TF here)
  $UV pip install --quiet --compile-bytecode -p "$venv/bin/python" -r "$lock" "$@"
  echo "$want" > "$stamp"
}

# Headless Chromium (Debian's package) for the tests of HTML reports.
if ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: Chromium is missing: install Debian's chromium package (apt-get install chromium)" >&2
    exit 1
  fi
  echo "bootstrap: installing chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

install_venv .venv requirements.lock -r requirements-dev.txt -e .
install_venv .venv-services requirements-services.lock
# bqemulator would otherwise try to download DuckDB's spatial extension at start-up.
.venv-services/bin/python -c "from duckdb_extensions import extension_importer as e; e.import_extension('spatial'); e.import_extension('avro')"

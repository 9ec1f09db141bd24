#!/usr/bin/env bash
# Fresh-machine set-up: virtualenv, CPU torch first (a bare `torch` requirement would pull GBs of CUDA wheels),
# then the project with its extras, then perf_analyzer with its private glibc loader (scripts/install_perf_analyzer.py).
set -euo pipefail
VENV=${1:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
ORT_EXTRA=${ORT_EXTRA:-cpu}   # cpu -> onnxruntime, gpu -> onnxruntime-gpu (never both)
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q "$TORCH_SPEC"
"${PIP[@]}" install -q -e ".[${ORT_EXTRA},export,deploy,client,loadtest,parquet,hdf5,tune,dev]"
"$VENV/bin/python" scripts/install_perf_analyzer.py
# promtool validates deploy/monitoring rules in the tests; Debian's `prometheus` package ships it.
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      >/dev/null) || echo "warning: could not install promtool; its tests will skip"
  else
    echo "note: promtool not installed (needs root for apt-get install prometheus); its tests will skip"
  fi
fi
# HAProxy fronts the local fleet (`python -m deploy.fleet`, its tests and `make fleet-chaos`): Debian's haproxy 2.6.
# (`make fleet-chaos` also runs the Prometheus server of the `prometheus` package installed above for promtool.)
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy \
      >/dev/null) || echo "warning: could not install haproxy; the fleet and its tests need it"
  else
    echo "note: haproxy not installed (needs root for apt-get install haproxy); the fleet tests will skip"
  fi
fi
echo "setup complete: $VENV"

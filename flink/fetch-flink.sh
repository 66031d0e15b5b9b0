#!/usr/bin/env bash
# Installs Apache Flink 2.3.0 from PyPI into a cache directory (idempotent) and prints the
# FLINK_HOME it made (jars in $FLINK_HOME/lib, scripts in $FLINK_HOME/bin).
#
#   flink/fetch-flink.sh           install if missing, print FLINK_HOME
#   SHMFLOW_FLINK_CACHE=/dir ...   cache somewhere else (default ~/.cache/shmflow/flink-2.3.0)
#
# apache-flink-libraries carries lib/ (flink-dist and friends); apache-flink (--no-deps: its
# Python dependencies are not needed) adds bin/ and conf/ for a standalone cluster. Maven is
# not needed: flink/build.sh compiles against $FLINK_HOME/lib with javac.
set -euo pipefail
version=2.3.0
cache=${SHMFLOW_FLINK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shmflow/flink-$version}
marker=$cache/.installed
if [[ ! -f $marker ]]; then
  python=
  for p in python3.11 python3.12 python3.10 python3; do
    if command -v "$p" >/dev/null 2>&1; then python=$p; break; fi
  done
  [[ -n $python ]] || { echo "fetch-flink: no python3 found" >&2; exit 1; }
  mkdir -p "$cache"
  # A lock so two concurrent runs (tests in parallel) do not install over each other.
  exec 9>"$cache/.lock"
  flock 9
  if [[ ! -f $marker ]]; then
    echo "fetch-flink: installing Flink $version from PyPI into $cache (takes a few minutes)" >&2
    rm -rf "$cache/venv"
    "$python" -m venv "$cache/venv" >&2
    "$cache/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
      "apache-flink-libraries==$version" "apache-flink==$version" >&2
    home=$(ls -d "$cache"/venv/lib/python3*/site-packages/pyflink)
    ls "$home"/lib/flink-dist-*.jar >/dev/null
    echo "$home" >"$marker"
  fi
  exec 9>&-
fi
cat "$marker"

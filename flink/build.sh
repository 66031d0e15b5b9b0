#!/usr/bin/env bash
# Builds the Flink module: libshmflow_ffi.so (cargo), the Java classes (javac --release 11
# -Xlint:all -Werror against the Flink 2.3.0 jars that flink/fetch-flink.sh installs from
# PyPI) and target/flink/shmflow-flink.jar with the native library inside.
#
#   flink/build.sh                 build the jar (with the debug build of the library)
#   flink/build.sh --release       build the jar with the release build of the library
#   flink/build.sh --test [NAME]   build, then run the MiniCluster tests (or those matching NAME)
#
# Output: target/flink/shmflow-flink.jar (copy it into $FLINK_HOME/lib of every JobManager
# and TaskManager). Environment: SHMFLOW_FLINK_CACHE (where Flink is installed),
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
test=false
filter=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --release) profile=release ;;
    --test) test=true; filter=${2:-}; [[ $# -gt 1 ]] && shift ;;
    *) echo "flink/build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
FLINK_HOME=$(flink/fetch-flink.sh)
export FLINK_HOME
target=${CARGO_TARGET_DIR:-target}
if [[ $profile == release ]]; then
  cargo build -q -p shmflow-ffi --release
else
  cargo build -q -p shmflow-ffi
fi
so="$target/$profile/libshmflow_ffi.so"
out="$target/flink"
rm -rf "$out/classes" "$out/test-classes" "$out/demo-classes"
mkdir -p "$out/classes/native" "$out/test-classes"
cp "$so" "$out/classes/native/libshmflow_ffi.so"
cp=("$FLINK_HOME/lib/*")
javac --release 11 -Xlint:all -Werror -encoding UTF-8 -cp "${cp[0]}" -d "$out/classes" \
  $(find flink/src/main/java -name '*.java' | sort)
jar --create --file "$out/shmflow-flink.jar" -C "$out/classes" .
# The demo job (flink/demo): compiled the same way, in its own jar.
mkdir -p "$out/demo-classes"
javac --release 11 -Xlint:all -Werror -encoding UTF-8 -cp "${cp[0]}" -d "$out/demo-classes" \
  $(find flink/src/demo/java -name '*.java' | sort)
jar --create --file "$out/shmflow-flink-demo.jar" -C "$out/demo-classes" .
echo "flink/build.sh: $out/shmflow-flink.jar (Flink $(basename "$(ls "$FLINK_HOME"/lib/flink-dist-*.jar)" .jar | sed 's/flink-dist-//'), $profile library)"
if $test; then
  javac --release 11 -Xlint:all -Werror -encoding UTF-8 -cp "$out/shmflow-flink.jar:${cp[0]}" -d "$out/test-classes" \
    $(find flink/src/test/java -name '*.java' | sort)
  # The JVM options Flink 2.x needs on Java 17 (its config.yaml's env.java.opts.all).
  opens=(--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED
    --add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED
    --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.text=ALL-UNNAMED
    --add-opens=java.base/java.time=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent=ALL-UNNAMED --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED)
  # Bounded (10 minutes); whatever way the JVM ends, its arenas and registries are removed
  # (they are named after this script's pid).
  run=shmflow-it-$$
  timeout 600 java -Xmx1g "${opens[@]}" -Dshmflow.it.run=$run -Dlog4j.configurationFile="$PWD/flink/src/test/resources/log4j2-test.properties" \
    -cp "$out/test-classes:$out/shmflow-flink.jar:${cp[0]}" org.shmflow.flink.MiniClusterTest $filter &
  jpid=$!
  rc=0
  wait $jpid || rc=$?
  rm -rf /dev/shm/$run-* "${TMPDIR:-/tmp}"/$run-*.registry
  exit $rc
fi

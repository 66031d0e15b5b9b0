#!/usr/bin/env bash
# A standalone Flink 2.3 session cluster on this host (1 JobManager + TaskManagers of 1 slot,
# loopback only) from the PyPI install, with the shmflow jar in its lib/ (an overlay
# directory: the cached installation is never modified). Used by flink/demo and flink/bench.
#
#   flink/cluster.sh start DIR [--factory netty|shmflow[-zc|-copy][-spinNS][-cspinNS][-nodirect][-nodeliver][-nobank][-notaskpoll][-directall][-base]] [--port 8091] [--tms 2]
#   flink/cluster.sh tm DIR          start one more TaskManager (a replacement after a kill)
#   flink/cluster.sh stop DIR        stop exactly the processes this DIR's cluster started
#   flink/cluster.sh pids DIR        print the TaskManager pids, one per line
#
# DIR gets conf/, lib/, pids/, log/ and the arena's registry. Needs target/flink/shmflow-flink.jar
# (flink/build.sh --release), or the jar SHMFLOW_FLINK_JAR names; the factory shmflow-base runs
# the jar SHMFLOW_FLINK_BASE_JAR names (an older build, for A/B runs) with the default settings.
# SHMFLOW_TM_JAVA_OPTS: extra JVM options of the TaskManagers (diagnosis: GC logs,
# -XX:+PreserveFramePointer for perf).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cmd=${1:?usage: flink/cluster.sh start|tm|stop|pids DIR [options]}
dir=${2:?usage: flink/cluster.sh start|tm|stop|pids DIR [options]}
shift 2
FH=$("$here/fetch-flink.sh")
export FLINK_CONF_DIR=$dir/conf FLINK_LIB_DIR=$dir/lib

rest_port() { sed -n 's/^  port: \([0-9]*\)$/\1/p' "$dir/conf/config.yaml" | head -1; }

tm_count() {
  curl -s --max-time 2 "http://localhost:$(rest_port)/taskmanagers" |
    python3 -c 'import sys,json; print(len(json.load(sys.stdin)["taskmanagers"]))' 2>/dev/null || echo 0
}

case "$cmd" in
  start)
    factory=shmflow port=8091 tms=2
    while [[ $# -gt 0 ]]; do
      case "$1" in
        --factory) factory=$2; shift ;;
        --port) port=$2; shift ;;
        --tms) tms=$2; shift ;;
        *) echo "flink/cluster.sh: unknown option $1" >&2; exit 2 ;;
      esac
      shift
    done
    mkdir -p "$dir/conf" "$dir/lib" "$dir/pids" "$dir/log"
    for j in "$FH"/lib/*.jar; do ln -sf "$j" "$dir/lib/"; done
    jar=${SHMFLOW_FLINK_JAR:-$root/target/flink/shmflow-flink.jar}
    if [[ $factory == shmflow-base* ]]; then
      jar=${SHMFLOW_FLINK_BASE_JAR:?flink/cluster.sh: --factory shmflow-base needs SHMFLOW_FLINK_BASE_JAR}
    fi
    cp "$jar" "$dir/lib/shmflow-flink.jar"
    cp "$FH"/conf/log4j*.properties "$dir/conf/"
    # shmflow[-part...]: each dash-separated part after "shmflow" sets one thing (combinable,
    # e.g. shmflow-copy-spin0): zc (the default), copy (zero-copy false), spinNS (producer dispatcher), cspinNS (consumer dispatcher),
    # nodirect, nodeliver (deliver-on-credit false), nobank (banked-credit false),
    # notaskpoll (consumer task-polls false), directall,
    # direct8k (direct-max-bytes 8kb, the default: full buffers through the dispatcher),
    # and base (no settings).
    case "$factory" in
      netty) fclass=org.apache.flink.runtime.io.network.NettyShuffleServiceFactory ;;
      shmflow | shmflow-*)
        fclass=org.shmflow.flink.ShmflowShuffleServiceFactory zerocopy=true
        IFS=- read -r -a parts <<<"${factory#shmflow}"
        for part in "${parts[@]}"; do
          case "$part" in
            '' | base) ;;
            zc) zerocopy=true ;;
            copy) zerocopy=false ;;
            spin[0-9]*) spin=${part#spin} ;;
            cspin[0-9]*) cspin=${part#cspin} ;;
            nodirect) direct=false ;;
            nodeliver) deliver=false ;;
            nobank) bank=false ;;
            notaskpoll) taskpolls=false ;;
            directall) directmax=32kb ;;
            direct8k) directmax=8kb ;;
            *) echo "flink/cluster.sh: unknown factory part '$part' in $factory" >&2; exit 2 ;;
          esac
        done
        ;;
      *) echo "flink/cluster.sh: --factory netty|shmflow[-zc|-copy][-spinNS][-nodirect][-directall][-base]" >&2; exit 2 ;;
    esac
    opens="--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.text=ALL-UNNAMED --add-opens=java.base/java.time=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED"
    cat >"$dir/conf/config.yaml" <<YAML
# Written by flink/cluster.sh: 1 JobManager + TaskManagers x 1 slot on loopback.
env:
  java:
    opts:
      all: $opens
${SHMFLOW_TM_JAVA_OPTS:+      taskmanager: $SHMFLOW_TM_JAVA_OPTS
}  pid:
    dir: $dir/pids
  log:
    dir: $dir/log
jobmanager:
  bind-host: localhost
  rpc:
    address: localhost
    port: $((port - 1958))
  memory:
    process:
      size: 1200m
taskmanager:
  bind-host: localhost
  host: localhost
  numberOfTaskSlots: 1
  memory:
    process:
      size: 2048m
    segment-size: 32kb
parallelism:
  default: 2
rest:
  address: localhost
  bind-address: localhost
  port: $port
blob:
  server:
    port: "$((port - 1957))"
heartbeat:
  interval: 1000
  timeout: 5000
restart-strategy:
  type: fixed-delay
  fixed-delay:
    attempts: 1000
    delay: 1 s
shuffle-service-factory:
  class: $fclass
shmflow:
  arena:
    name: shmflow-cluster-$(basename "$dir")
    size: 64m
  registry:
    dir: $dir/registry
  consumer:
    zero-copy: ${zerocopy:-true}
    deliver-on-credit: ${deliver:-true}
    banked-credit: ${bank:-true}
    task-polls: ${taskpolls:-true}
${cspin:+    spin-ns: $cspin
}  spin-ns: ${spin:-5000}
  producer:
    direct: ${direct:-true}
${directmax:+    direct-max-bytes: $directmax
}
YAML
    timeout 120 "$FH/bin/jobmanager.sh" start >/dev/null
    for _ in $(seq 1 "$tms"); do timeout 120 "$FH/bin/taskmanager.sh" start >/dev/null; done
    for _ in $(seq 1 90); do
      [[ $(tm_count) == "$tms" ]] && { echo "flink/cluster.sh: up on port $port ($tms TaskManagers, factory $factory)"; exit 0; }
      sleep 1
    done
    echo "flink/cluster.sh: the cluster did not come up (logs in $dir/log)" >&2
    exit 1
    ;;
  tm)
    timeout 120 "$FH/bin/taskmanager.sh" start >/dev/null
    ;;
  pids)
    cat "$dir"/pids/*taskexecutor*.pid 2>/dev/null || true
    ;;
  stop)
    pids=$(cat "$dir"/pids/*.pid 2>/dev/null || true)
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 30); do
      alive=0
      for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
      [[ $alive == 0 ]] && break
      sleep 0.5
    done
    for p in $pids; do kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true; done
    rm -f "$dir"/pids/*.pid "/dev/shm/shmflow-cluster-$(basename "$dir")"
    echo "flink/cluster.sh: stopped $(echo $pids | wc -w) processes"
    ;;
  *) echo "flink/cluster.sh: unknown command $cmd" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# `make dev`: the whole product on this machine, no cluster needed.
#
#   1. builds kube-apiserver and etcd from Go modules if they are not cached (hack/controlplane.sh),
#   2. starts them on loopback (hack/devcluster: the way envtest starts them in the tests) with
#      etcd's data in $DEV_DIR/etcd, installs the CRDs and writes $DEV_DIR/kubeconfig,
#   3. runs the operator (controllers and the event intake on 127.0.0.1:8090) and the sample
#      receiver on 127.0.0.1:9000, whose lines it prints,
#   4. prints the line that points kubectl at it, and runs until Ctrl-C (or SIGTERM), which stops
#      everything it started, in order.
#
# Data survives a restart (etcd's data dir and the history store's SQLite file are kept);
# `rm -rf .dev` starts afresh. A second
# `make dev` after a crash or `kill -9` first stops what the previous one left running (it knows
# those processes by pid and command line, from $DEV_DIR/pids).
#
# Settings (environment): DEV_DIR (.dev), DEV_APISERVER_PORT (16443), DEV_ETCD_PORT (16379),
# DEV_PROBE_PORT (18081), DEV_HISTORY_API_PORT (18444: the history API, kubectl get whdr),
# DEV_SUCCEEDED_RETENTION and DEV_FAILED_RETENTION (2m each: the time finished deliveries stay
# in etcd; the operator's own defaults are 10m and 1h); DEV_NO_BUILD=1 runs bin/ as it is instead of rebuilding. The intake (127.0.0.1:8090) and receiver (127.0.0.1:9000) addresses are
# fixed: the samples and `webhook-operator publish` use them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="${PWD}"

DEV_DIR="${DEV_DIR:-.dev}"
DEV_APISERVER_PORT="${DEV_APISERVER_PORT:-16443}"
DEV_ETCD_PORT="${DEV_ETCD_PORT:-16379}"
DEV_PROBE_PORT="${DEV_PROBE_PORT:-18081}"
DEV_HISTORY_API_PORT="${DEV_HISTORY_API_PORT:-18444}"
DEV_SUCCEEDED_RETENTION="${DEV_SUCCEEDED_RETENTION:-2m}"
DEV_FAILED_RETENTION="${DEV_FAILED_RETENTION:-2m}"
INTAKE_ADDR=127.0.0.1:8090
RECEIVER_ADDR=127.0.0.1:9000

mkdir -p "${DEV_DIR}/logs"
dev_dir="$(cd "${DEV_DIR}" && pwd)"
logs="${dev_dir}/logs"
pidfile="${dev_dir}/pids"
operator="${root}/bin/webhook-operator"
devcluster="${root}/bin/devcluster"

say() { echo "dev: $*"; }
die() { echo "dev: error: $*" >&2; exit 1; }

# args_of PID prints the command line of a running process (empty when it is gone).
args_of() { ps -o args= -p "$1" 2>/dev/null || true; }

# listening PORT succeeds when something accepts connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pid PID SECONDS: SIGTERM, then SIGKILL after SECONDS if it is still there.
stop_pid() {
  local pid="$1" secs="$2" i
  kill -TERM "${pid}" 2>/dev/null || return 0
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "${pid}" 2>/dev/null || return 0
    sleep 0.1
  done
  say "pid ${pid} did not stop within ${secs}s: killing it"
  kill -KILL "${pid}" 2>/dev/null || true
}

# The pid file holds one "name pid command-line" line per process, the first being this script.
# A process is only signalled if its command line is still the one recorded: a recycled pid is
# left alone. record NAME PID [COMMAND] records COMMAND, as launched, or else the process's
# current command line.
record() { printf '%s %s %s\n' "$1" "$2" "${3:-$(args_of "$2")}" >>"${pidfile}"; }
# ours PID ARGS: PID still runs the command recorded as ARGS.
# A child of this script is ours whatever it runs (it may not have exec'd yet).
ours() {
  [[ -n "$2" && "$(args_of "$1")" == "$2" ]] && return 0
  [[ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" == "$$" ]]
}

stop_recorded() {
  [[ -f "${pidfile}" ]] || return 0
  local name pid args
  # Reverse order: the operator before the control plane. devcluster stops kube-apiserver and
  # etcd itself; they are signalled directly only if they outlived it (after a kill -9).
  while read -r name pid args; do
    [[ "${name}" == "dev.sh" || "${name}" == "controlplane" ]] && continue
    if ours "${pid}" "${args}"; then stop_pid "${pid}" 40; fi
  done < <(tac "${pidfile}")
  # kube-apiserver (recorded last) before etcd.
  while read -r name pid args; do
    if [[ "${name}" == "controlplane" ]] && ours "${pid}" "${args}"; then stop_pid "${pid}" 20; fi
  done < <(tac "${pidfile}")
  rm -f "${pidfile}"
}

clean_stale() {
  [[ -f "${pidfile}" ]] || return 0
  local name pid args
  read -r name pid args <"${pidfile}" || true
  if [[ "${name}" == "dev.sh" && "${pid}" != "$$" ]] && ours "${pid}" "${args}"; then
    die "make dev is already running with ${DEV_DIR} (pid ${pid}); stop it first (Ctrl-C in its terminal, or: kill ${pid})"
  fi
  say "stopping what a previous run left behind"
  stop_recorded
}

cleaning=""
cleanup() {
  local code=$?
  [[ -n "${cleaning}" ]] && return
  cleaning=1
  trap - INT TERM HUP
  echo
  say "stopping the operator, the receiver and the control plane"
  stop_recorded
  rm -f "${dev_dir}/kubeconfig"
  say "stopped (data kept in ${DEV_DIR}/etcd; rm -rf ${DEV_DIR} starts afresh)"
  exit "${code}"
}

clean_stale
for port in "${DEV_APISERVER_PORT}" "${DEV_ETCD_PORT}" "${DEV_PROBE_PORT}" "${DEV_HISTORY_API_PORT}" "${INTAKE_ADDR##*:}" "${RECEIVER_ADDR##*:}"; do
  if listening "${port}"; then
    die "port ${port} on 127.0.0.1 is in use by another process (see: lsof -nP -iTCP:${port} -sTCP:LISTEN); stop it, or choose other ports (DEV_APISERVER_PORT, DEV_ETCD_PORT, DEV_PROBE_PORT, DEV_HISTORY_API_PORT)"
  fi
done

: >"${pidfile}"
record dev.sh "$$"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Components run in sessions of their own (setsid), so that Ctrl-C reaches this script alone and
# it stops them in order: the operator first, the control plane last.
detach=()
command -v setsid >/dev/null && detach=(setsid)

say "building the control plane if needed (the first build takes minutes; it is cached)"
assets="$(hack/controlplane.sh)"
if [[ -n "${DEV_NO_BUILD:-}" && -x "${operator}" && -x "${devcluster}" ]]; then
  say "using the binaries in bin/ as they are (DEV_NO_BUILD)"
else
  say "building bin/webhook-operator and bin/devcluster"
  go build -o "${operator}" .
  go build -o "${devcluster}" ./hack/devcluster
fi

# The sample receiver knows the credentials of config/samples/secret.yaml.
sample_value() { sed -n "s/^  $1: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" config/samples/secret.yaml; }
signing_secret="$(sample_value signing-secret)"
auth_token="$(sample_value auth-token)"
[[ -n "${signing_secret}" && -n "${auth_token}" ]] || die "could not read signing-secret and auth-token from config/samples/secret.yaml"
(umask 077 && printf '%s\n' "${signing_secret}" >"${dev_dir}/signing-secret")

# Flags are passed only if this build of the operator has them.
help="$("${operator}" manager -h 2>&1 || true)"
has_flag() { grep -qE -- "^ +-$1( |$)" <<<"${help}"; }

say "starting etcd and kube-apiserver (logs: ${DEV_DIR}/logs/controlplane.log)"
# Logs are truncated and the old kubeconfig removed here, not in the background jobs: the
# readiness checks below must not read what a previous run left.
: >"${logs}/controlplane.log"
: >"${logs}/receiver.log"
: >"${logs}/operator.log"
rm -f "${dev_dir}/kubeconfig"
cmd=("${devcluster}" --dir "${dev_dir}" --assets "${assets}" --apiserver-port "${DEV_APISERVER_PORT}" --etcd-port "${DEV_ETCD_PORT}")
# The history API is registered (an APIService to https://localhost:PORT) only when the
# operator serves it: an APIService without its server makes every kubectl command warn.
has_flag history-api-bind-address && cmd+=(--history-api-port "${DEV_HISTORY_API_PORT}")
"${detach[@]}" "${cmd[@]}" >>"${logs}/controlplane.log" 2>&1 &
cluster_pid=$!
record devcluster "${cluster_pid}" "${cmd[*]}"
for ((i = 0; ; i++)); do
  [[ -f "${dev_dir}/kubeconfig" ]] && grep -q '^devcluster: ready' "${logs}/controlplane.log" && break
  kill -0 "${cluster_pid}" 2>/dev/null || { tail -n 20 "${logs}/controlplane.log" >&2; die "the control plane did not start"; }
  ((i < 1200)) || die "the control plane did not start within 120s; see ${DEV_DIR}/logs/controlplane.log"
  sleep 0.1
done
# etcd and kube-apiserver run in process groups of their own: recorded too, so that a run after
# a crash of this script can stop them.
for pid in $(pgrep -P "${cluster_pid}" || true); do record controlplane "${pid}"; done
export KUBECONFIG="${dev_dir}/kubeconfig"

say "starting the sample receiver on http://${RECEIVER_ADDR} (logs: ${DEV_DIR}/logs/receiver.log)"
cmd=("${operator}" receiver --listen "${RECEIVER_ADDR}" --secret-file "${dev_dir}/signing-secret" --auth-header "X-Api-Key:${auth_token}")
"${detach[@]}" "${cmd[@]}" >>"${logs}/receiver.log" 2>&1 &
record receiver "$!" "${cmd[*]}"

flags=(--health-probe-bind-address "127.0.0.1:${DEV_PROBE_PORT}")
if has_flag intake-bind-address; then
  flags+=(--intake-bind-address "${INTAKE_ADDR}")
  has_flag intake-allow-anonymous && flags+=(--intake-allow-anonymous)
else
  say "this operator has no event intake yet (--intake-bind-address): publish will not work"
fi
# The outbound address policy refuses loopback by default; the receiver is on loopback.
has_flag outbound-allow-cidrs && flags+=(--outbound-allow-cidrs "127.0.0.0/8,::1/128")
# The history store: embedded SQLite next to etcd's data, kept across restarts like it.
has_flag history-database && flags+=(--history-database "sqlite://${dev_dir}/history.db")
# Finished deliveries leave etcd sooner than the operator's defaults (10m, 1h), so that the
# tour shows one that has left etcd and is still in the history (kubectl get whdr).
has_flag succeeded-retention && flags+=(--succeeded-retention "${DEV_SUCCEEDED_RETENTION}" --failed-retention "${DEV_FAILED_RETENTION}")
# The history API, as in a cluster: the operator keeps its certificate in a Secret of
# docrouter-system and writes the APIService's caBundle; kube-apiserver forwards to it.
if has_flag history-api-bind-address; then
  flags+=(--history-api-bind-address "127.0.0.1:${DEV_HISTORY_API_PORT}" --history-api-namespace docrouter-system)
fi

say "starting the operator: manager ${flags[*]} (logs: ${DEV_DIR}/logs/operator.log)"
cmd=("${operator}" manager "${flags[@]}")
"${detach[@]}" "${cmd[@]}" >>"${logs}/operator.log" 2>&1 &
operator_pid=$!
record operator "${operator_pid}" "${cmd[*]}"
for ((i = 0; ; i++)); do
  curl -fsS -o /dev/null "http://127.0.0.1:${DEV_PROBE_PORT}/readyz" 2>/dev/null && break
  kill -0 "${operator_pid}" 2>/dev/null || { tail -n 20 "${logs}/operator.log" >&2; die "the operator exited"; }
  ((i < 600)) || die "the operator was not ready within 60s; see ${DEV_DIR}/logs/operator.log"
  sleep 0.1
done
if has_flag intake-bind-address; then
  for ((i = 0; ; i++)); do
    listening "${INTAKE_ADDR##*:}" && break
    ((i < 300)) || die "the intake did not listen on ${INTAKE_ADDR} within 30s; see ${DEV_DIR}/logs/operator.log"
    sleep 0.1
  done
fi

cat <<EOF

DocRouter webhook operator: local stack running (Ctrl-C stops it).
  kube-apiserver  https://127.0.0.1:${DEV_APISERVER_PORT}   logs: ${DEV_DIR}/logs/controlplane.log
  operator        intake http://${INTAKE_ADDR}, history API https://127.0.0.1:${DEV_HISTORY_API_PORT}   logs: ${DEV_DIR}/logs/operator.log
  receiver        http://${RECEIVER_ADDR}   its lines follow below
Try the tour of README.md: kubectl apply -k config/samples
In another terminal, point kubectl at the stack:

export KUBECONFIG=${dev_dir}/kubeconfig

EOF

tail -n +1 -F "${logs}/receiver.log" &
tail_pid=$!
record tail "${tail_pid}" "tail -n +1 -F ${logs}/receiver.log"
# Run until interrupted, or until a component exits on its own.
while :; do
  while read -r name pid args; do
    [[ "${name}" == "dev.sh" || "${name}" == "controlplane" || "${name}" == "tail" ]] && continue
    if ! kill -0 "${pid}" 2>/dev/null; then
      say "${name} (pid ${pid}) exited; see ${DEV_DIR}/logs"
      exit 1
    fi
  done <"${pidfile}"
  sleep 1
done

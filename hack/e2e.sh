#!/usr/bin/env bash
# End-to-end test of the local stack, driven with the real kubectl exactly as the README's tour
# tells a user to: start `make dev` (hack/dev.sh), apply the samples, publish an event, watch
# the deliveries succeed, watch the failing endpoint's delivery retry with growing waits and give
# up, retry it by annotation, send a test event by annotation, wait for a condition, be refused
# an invalid endpoint; then stop the stack as Ctrl-C does and start it again (data still there), and
# kill -9 it and start it again (the new one stops what the killed one left running).
#
# Every step is asserted: the script prints "ok N - what was checked" and exits non-zero at the
# first failed check, after printing the objects and the logs. It stops everything it started,
# also on failure or interruption. No TTY or stdin is needed; once the binaries are built (first
# step, not timed) it takes 70 to 90 seconds, and gives up after E2E_TIMEOUT seconds (default 230).
#
# It runs its own stack in .dev/e2e (wiped at the start) with its own API server ports, but the
# intake (127.0.0.1:8090) and the receiver (127.0.0.1:9000) are the samples' addresses: stop a
# running `make dev` first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="${PWD}"

export DEV_DIR=.dev/e2e
export DEV_APISERVER_PORT="${E2E_APISERVER_PORT:-16543}"
export DEV_ETCD_PORT="${E2E_ETCD_PORT:-16579}"
export DEV_PROBE_PORT="${E2E_PROBE_PORT:-18091}"
export DEV_HISTORY_API_PORT="${E2E_HISTORY_API_PORT:-18544}"
# Finished deliveries leave etcd after 20 s, so that the run sees them in the history only.
export DEV_SUCCEEDED_RETENTION=20s DEV_FAILED_RETENTION=20s
limit="${E2E_TIMEOUT:-230}"
dev_dir="${root}/${DEV_DIR}"
dev_log="${root}/.dev/e2e-dev.log"
operator="${root}/bin/webhook-operator"
export KUBECONFIG="${dev_dir}/kubeconfig"
ns=default

checks=0
dev_pid=""

ok() {
  checks=$((checks + 1))
  echo "ok ${checks} - $*"
}

fail() {
  echo "FAIL - $*" >&2
  diagnostics >&2
  exit 1
}

diagnostics() {
  echo "--- diagnostics after ${SECONDS}s"
  if [[ -f "${KUBECONFIG}" ]]; then
    kubectl get webhookendpoints,webhookdeliveries -n "${ns}" -o wide 2>&1 || true
    kubectl get events -n "${ns}" --sort-by=.lastTimestamp 2>&1 | tail -n 20 || true
  fi
  for f in "${dev_log}" "${dev_dir}/logs/operator.log" "${dev_dir}/logs/receiver.log"; do
    [[ -f "${f}" ]] && { echo "--- tail ${f#"${root}"/}"; tail -n 25 "${f}"; }
  done
  echo "---"
}

# in_time fails the run when the time limit is exceeded.
in_time() { ((SECONDS < limit)) || fail "time limit of ${limit}s exceeded"; }

# eventually SECONDS DESCRIPTION COMMAND...: retries COMMAND until it succeeds.
eventually() {
  local secs="$1" desc="$2" i
  shift 2
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then
      ok "${desc}"
      return 0
    fi
    in_time
    sleep 0.25
  done
  fail "${desc}: not within ${secs}s"
}

# field OBJECT JSONPATH prints one field of an object.
field() { kubectl get -n "${ns}" "$1" -o "jsonpath=$2"; }

# expect DESCRIPTION ACTUAL WANTED
expect() {
  [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
  ok "$1 ($2)"
}

# receiver_printed PATTERN: the receiver printed a line matching PATTERN (grep -E).
receiver_printed() { grep -qE -- "$1" "${dev_dir}/logs/receiver.log"; }

epoch() { date -u -d "$1" +%s; }

start_dev() {
  : >"${dev_log}" # now, not in the background job: the previous run's log must not be read as this one's
  hack/dev.sh >>"${dev_log}" 2>&1 </dev/null &
  dev_pid=$!
  local i
  for ((i = 0; ; i++)); do
    grep -q '^export KUBECONFIG=' "${dev_log}" && break
    kill -0 "${dev_pid}" 2>/dev/null || { dev_pid=""; fail "make dev exited before it was ready"; }
    in_time
    sleep 0.25
  done
  cp "${dev_dir}/pids" "${root}/.dev/e2e-pids"
}

# stop_dev stops hack/dev.sh as Ctrl-C does and checks that nothing it started is left.
stop_dev() {
  local pid="${dev_pid}" i name p args
  dev_pid=""
  [[ -n "${pid}" ]] || return 0
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "${pid}" 2>/dev/null; then
    kill -KILL "${pid}" 2>/dev/null || true
    echo "make dev did not stop within 60s" >&2
    return 1
  fi
  local left=""
  while read -r name p args; do
    [[ "${name}" == "dev.sh" ]] && continue
    [[ -n "$(ps -o args= -p "${p}" 2>/dev/null || true)" ]] && left+=" ${name}(${p})"
  done <"${root}/.dev/e2e-pids"
  if [[ -n "${left}" ]]; then
    echo "still running after make dev stopped:${left}" >&2
    return 1
  fi
  return 0
}

on_exit() {
  local code=$?
  if [[ -n "${dev_pid}" ]]; then
    stop_dev || code=1
  fi
  if ((code == 0)); then
    echo "PASS: ${checks} checks in ${SECONDS}s"
  else
    echo "FAILED after ${checks} passing checks, ${SECONDS}s" >&2
  fi
  exit "${code}"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "${dev_dir}"
mkdir -p "${root}/.dev"

# Building is not part of the time limit (on a cold cache it takes minutes; `make test` before
# this in CI leaves the cache warm). make dev then runs these binaries (DEV_NO_BUILD).
echo "# building the control plane, bin/webhook-operator and bin/devcluster (cached)"
hack/controlplane.sh >/dev/null
go build -o "${operator}" .
go build -o "${root}/bin/devcluster" ./hack/devcluster
export DEV_NO_BUILD=1 # every make dev of this run uses these binaries
SECONDS=0

echo "# make dev (hack/dev.sh), in .dev/e2e"
start_dev
ok "make dev is up and printed: $(grep '^export KUBECONFIG=' "${dev_log}")"
expect "kubectl version reaches the API server" "$(kubectl version -o json 2>/dev/null | jq -r .serverVersion.gitVersion)" v1.37.2
expect "the CRDs are installed" "$(kubectl get crd -o name | sort | tr '\n' ' ')" \
  "customresourcedefinition.apiextensions.k8s.io/webhookdeliveries.webhooks.docrouter.ai customresourcedefinition.apiextensions.k8s.io/webhookendpoints.webhooks.docrouter.ai "

echo "# kubectl apply -k config/samples"
kubectl apply -k config/samples >/dev/null
ok "the samples are applied"
kubectl wait -n "${ns}" --for=condition=Ready webhookendpoint/signed webhookendpoint/header-auth webhookendpoint/failing --timeout=30s >/dev/null ||
  fail "the sample endpoints did not become Ready"
ok "kubectl wait --for=condition=Ready: the three sample endpoints are Ready"

echo "# publish config/samples/event.json"
event_id="$(jq -r .event_id config/samples/event.json)"
hash="$(printf '%s' "${event_id}" | sha256sum | cut -c1-16)"
signed="signed-${hash}" header="header-auth-${hash}" failing="failing-${hash}"
# E2E_PUBLISH=manual applies the deliveries by hand, as for a build without the publish command.
publish_help="$("${operator}" publish -h 2>&1 || true)" # not piped into grep -q: SIGPIPE + pipefail
if [[ "${E2E_PUBLISH:-}" != manual && "${publish_help}" == *"Usage: webhook-operator publish"* ]]; then
  answer="$("${operator}" publish -f config/samples/event.json -n "${ns}")" || fail "publish failed: ${answer}"
  expect "the intake's answer lists one delivery per subscribed endpoint" \
    "$(jq -r '[.deliveries[].name] | sort | join(" ")' <<<"${answer}")" "${failing} ${header} ${signed}"
  again="$("${operator}" publish -f config/samples/event.json -n "${ns}")" || fail "publishing again failed: ${again}"
  expect "publishing the same event id again creates nothing" "$(jq -c '[.deliveries[].created] | unique' <<<"${again}")" "[false]"
  expect "still three deliveries" "$(kubectl get whd -n "${ns}" --no-headers | wc -l | tr -d ' ')" 3
else
  echo "# (E2E_PUBLISH=manual, or no publish command in this build: applying the same deliveries by hand)"
  kubectl apply -n "${ns}" -f config/samples/manual/webhookdeliveries.yaml >/dev/null
  ok "the deliveries of the event are applied by hand"
fi

for d in "${signed}" "${header}"; do
  kubectl wait -n "${ns}" --for=condition=Ready "webhookdelivery/${d}" --timeout=30s >/dev/null ||
    fail "kubectl wait --for=condition=Ready whd/${d} timed out"
  ok "kubectl wait --for=condition=Ready whd/${d}"
  expect "${d}: phase, attempts, last code" "$(field "whd/${d}" '{.status.phase} {.status.attempts} {.status.lastStatusCode}')" "Succeeded 1 200"
done
eventually 5 "kubectl get webhookdeliveries shows both Succeeded" \
  bash -c "[[ \$(kubectl get webhookdeliveries -n ${ns} --no-headers | grep -c ' Succeeded ') -eq 2 ]]"
eventually 5 "the receiver verified the signature of ${event_id} on /hooks" \
  receiver_printed " 200 event=${event_id} type=llm.completed attempt=1 verified=signature path=/hooks$"
eventually 5 "the receiver verified the X-Api-Key header of ${event_id} on /header-hooks" \
  receiver_printed " 200 event=${event_id} type=llm.completed attempt=1 verified=header path=/header-hooks$"

echo "# the failing endpoint's delivery retries with growing waits (policy: 5s, then x2)"
declare -a seen=()
for ((i = 0; ; i++)); do
  snap="$(field "whd/${failing}" '{.status.attempts}|{.status.lastAttemptTime}|{.status.nextAttemptTime}|{.status.phase}')"
  IFS='|' read -r attempts last next phase <<<"${snap}"
  attempts="${attempts:-0}"
  if [[ -n "${next}" && "${phase}" == Retrying ]]; then
    seen[attempts]="$(($(epoch "${next}") - $(epoch "${last}")))"
  fi
  ((attempts >= 3)) && [[ -n "${seen[3]:-}" ]] && break
  ((i < 160)) || fail "the failing delivery did not reach 3 attempts within 40s: ${snap}"
  in_time
  sleep 0.25
done
[[ -n "${seen[1]:-}" && -n "${seen[2]:-}" ]] || fail "did not observe nextAttemptTime after attempts 1 and 2: ${seen[*]}"
((seen[1] < seen[2] && seen[2] < seen[3])) || fail "waits between attempts did not grow: ${seen[*]}"
ok "attempts 1, 2, 3 were followed by nextAttemptTime +${seen[1]}s, +${seen[2]}s, +${seen[3]}s"
expect "the failing delivery is Retrying with the receiver's 500" "$(field "whd/${failing}" '{.status.phase} {.status.lastStatusCode}')" "Retrying 500"
kubectl wait -n "${ns}" --for=jsonpath='{.status.phase}'=Failed "webhookdelivery/${failing}" --timeout=40s >/dev/null ||
  fail "the failing delivery did not reach Failed"
ok "kubectl wait --for=jsonpath='{.status.phase}'=Failed: the failing delivery gave up"
expect "after 1 attempt + 3 retries: attempts, Stalled reason, nextAttemptTime" \
  "$(field "whd/${failing}" '{.status.attempts} {.status.conditions[?(@.type=="Stalled")].reason} [{.status.nextAttemptTime}]')" "4 RetriesExhausted []"
eventually 10 "a Warning event RetriesExhausted is recorded on the delivery" \
  bash -c "kubectl get events -n ${ns} --field-selector involvedObject.name=${failing},reason=RetriesExhausted,type=Warning -o name | grep -q ."
receiver_printed " 500 event=${event_id} type=llm.completed attempt=4 verified=signature path=/fail/hooks" ||
  fail "the receiver did not print the 4th attempt"
ok "the receiver printed the 4 attempts, each verified and answered 500"

echo "# retry by annotation"
token="e2e-$(date +%s)"
kubectl annotate -n "${ns}" whd "${failing}" "webhooks.docrouter.ai/retry=${token}" --overwrite >/dev/null
eventually 10 "the retry annotation made attempt 5" bash -c "[[ \$(kubectl get -n ${ns} whd/${failing} -o jsonpath='{.status.attempts}') == 5 ]]"
expect "attempt 5 is Manual, the token is recorded, the delivery stays Failed" \
  "$(field "whd/${failing}" '{.status.history[-1].trigger} {.status.lastRetryToken} {.status.phase}')" "Manual ${token} Failed"
eventually 5 "the receiver got attempt 5" receiver_printed "event=${event_id} type=llm.completed attempt=5 verified=signature path=/fail/hooks"
sleep 3
expect "one annotation, one attempt: attempts 3s later" "$(field "whd/${failing}" '{.status.attempts}')" 5

echo "# test event by annotation"
kubectl annotate -n "${ns}" webhookendpoint signed "webhooks.docrouter.ai/test=${token}" --overwrite >/dev/null
test_whd=""
for ((i = 0; i < 40; i++)); do
  test_whd="$(kubectl get whd -n "${ns}" -l 'webhooks.docrouter.ai/endpoint=signed,webhooks.docrouter.ai/event-type=webhook.test' -o name)"
  [[ -n "${test_whd}" ]] && break
  sleep 0.25
done
[[ -n "${test_whd}" ]] || fail "the test annotation created no webhook.test delivery for endpoint signed"
ok "the test annotation created ${test_whd}"
kubectl wait -n "${ns}" --for=condition=Ready "${test_whd}" --timeout=30s >/dev/null || fail "kubectl wait --for=condition=Ready ${test_whd} timed out"
ok "kubectl wait --for=condition=Ready ${test_whd}"
eventually 5 "the receiver verified the webhook.test event" receiver_printed " 200 event=test-[0-9a-f]+ type=webhook.test attempt=1 verified=signature path=/hooks$"
expect "the endpoint recorded the test token" "$(field webhookendpoint/signed '{.status.lastTestToken}')" "${token}"

echo "# an invalid endpoint is refused with a clear message"
if out="$(kubectl apply -f config/samples/invalid/webhookendpoint_plain_http.yaml 2>&1)"; then
  fail "kubectl apply of a plain http:// endpoint without allowInsecureHTTP succeeded"
fi
want="spec.url uses plain http://: use an https:// URL, or set spec.allowInsecureHTTP: true to accept an unencrypted endpoint"
[[ "${out}" == *"${want}"* ]] || fail "kubectl apply was refused, but not with the CEL message: ${out}"
ok "kubectl apply of a plain http:// endpoint fails: ${want}"
kubectl get -n "${ns}" webhookendpoint plain-http >/dev/null 2>&1 && fail "the invalid endpoint exists"
ok "the invalid endpoint was not created"

echo "# the history: every delivery in kubectl get whdr, the failed one also after it left etcd"
eventually 60 "the history API's APIService is Available" bash -c \
  "[[ \$(kubectl get apiservice v1alpha1.history.webhooks.docrouter.ai -o jsonpath='{.status.conditions[?(@.type==\"Available\")].status}') == True ]]"
eventually 10 "kubectl get whdr lists the event's three deliveries and the test delivery" bash -c \
  "[[ \$(kubectl get whdr -n ${ns} --no-headers | wc -l) -eq 4 ]]"
kubectl wait -n "${ns}" --for=delete "webhookdelivery/${failing}" --timeout=60s >/dev/null 2>&1 ||
  fail "the Failed delivery did not leave etcd after --failed-retention (20s)"
ok "the Failed delivery left etcd after its 20 s there (kubectl wait --for=delete)"
expect "kubectl get whdr --field-selector status.phase=Failed still lists it" \
  "$(kubectl get whdr -n "${ns}" --field-selector status.phase=Failed -o name)" "webhookdeliveryrecord.history.webhooks.docrouter.ai/${failing}"
expect "its record holds every attempt, the manual one last, and when it left etcd" \
  "$(field "whdr/${failing}" '{.status.history[*].number} {.status.history[-1].trigger} {.status.phase}') $([[ -n "$(field "whdr/${failing}" '{.status.removedTime}')" ]] && echo removed)" \
  "1 2 3 4 5 Manual Failed removed"
expect "the endpoint's stats count its attempts of the last hour" \
  "$(kubectl get webhookendpointstats -n "${ns}" failing -o jsonpath='{.windows[0].window} {.windows[0].attempts.5xx} {.windows[0].deliveries.failed}')" "1h 5 1"

echo "# Ctrl-C, then make dev again: everything stops, data survives"
stop_dev || fail "make dev did not stop cleanly"
ok "make dev stopped (SIGTERM, as Ctrl-C) and left no process behind"
for port in "${DEV_APISERVER_PORT}" "${DEV_ETCD_PORT}" "${DEV_PROBE_PORT}" "${DEV_HISTORY_API_PORT}" 8090 9000; do
  (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null && fail "port ${port} is still open after make dev stopped"
done
ok "ports ${DEV_APISERVER_PORT}, ${DEV_ETCD_PORT}, ${DEV_PROBE_PORT}, ${DEV_HISTORY_API_PORT}, 8090 and 9000 are free again"
start_dev
ok "a second make dev is up"
eventually 60 "the history API answers again after the restart" kubectl get -n "${ns}" "whdr/${failing}"
expect "the history survived the restart" "$(field "whdr/${signed}" '{.status.phase} {.status.attempts}') $(field "whdr/${failing}" '{.status.phase} {.status.attempts}')" "Succeeded 1 Failed 5"

echo "# kill -9 make dev, then make dev again: it first stops what the killed one left running"
cp "${root}/.dev/e2e-pids" "${root}/.dev/e2e-pids-killed"
kill -KILL "${dev_pid}"
wait "${dev_pid}" 2>/dev/null || true
dev_pid=""
# still_running FILE prints the recorded processes (but dev.sh) that still run their command.
still_running() {
  local name p args out=""
  while read -r name p args; do
    [[ "${name}" == "dev.sh" ]] && continue
    [[ "$(ps -o args= -p "${p}" 2>/dev/null || true)" == "${args}" ]] && out+=" ${name}(${p})"
  done <"$1"
  echo "${out}"
}
orphans="$(still_running "${root}/.dev/e2e-pids-killed")"
[[ -n "${orphans}" ]] || fail "kill -9 of make dev left nothing running: this check would prove nothing"
ok "kill -9 of make dev left its components running:${orphans}"
start_dev
grep -q '^dev: stopping what a previous run left behind' "${dev_log}" || fail "make dev did not report stopping the previous run's processes"
[[ -z "$(still_running "${root}/.dev/e2e-pids-killed")" ]] || fail "processes of the killed run still run: $(still_running "${root}/.dev/e2e-pids-killed")"
ok "make dev after a kill -9 stopped the previous run's processes and came up"
eventually 60 "the history API answers after the kill -9 and the new start" kubectl get -n "${ns}" "whdr/${failing}"
expect "the history is still there" "$(field "whdr/${signed}" '{.status.phase}') $(field "whdr/${failing}" '{.status.phase}')" "Succeeded Failed"

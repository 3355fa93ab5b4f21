#!/usr/bin/env bash
# hack/run-farm.sh (`make run`): a whole guix-farm on this machine, from the pinned tools only.
#
# It starts etcd and kube-apiserver (TLS, token auth, RBAC; loopback), installs the CRDs, creates the
# namespace guix-farm with an AgentPool, starts MinIO with a public-read bucket (the substitute
# server), makes the farm's signing keys, starts nix-daemons with /gnu/store in private mount
# namespaces (one where the sample derivations are instantiated, one per agent), the controller and
# two agents building through their daemons, submits the sample derivations with `kubectl guixfarm
# submit`, prints how to watch them and how to substitute a result with nix, and stays in the
# foreground. Ctrl-C stops everything it started. State and logs live under .cache/run/ (wiped at
# each start). It needs root (mount namespaces), as the test bed does.
#
# The controller and the agents run with the generated RBAC (config/rbac) bound to their own tokens,
# not as cluster admins, so `make run` also proves the roles are sufficient.
#
# Environment:
#   RUN_FARM_EXIT_AFTER_READY=1  wait until the sample Builds succeed, print a summary, stop, exit 0
#   RUN_FARM_TIMEOUT=180         seconds to wait for the sample Builds (with EXIT_AFTER_READY)
#   RUN_FARM_STRATEGY=derivation-ordered  controller --strategy (basic or derivation-ordered)
#   RUN_FARM_BUILD_DURATION=3s   how long each sample build sleeps inside its sandbox (whole seconds)
#   RUN_FARM_DIR=.cache/run      state directory
set -euo pipefail
export GOTOOLCHAIN=local
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${GUIXFARM_TOOLS_BIN:-$ROOT/.cache/tools/bin}
RUN=${RUN_FARM_DIR:-$ROOT/.cache/run}
NS=guix-farm
BUCKET=guix-farm-cache
STRATEGY=${RUN_FARM_STRATEGY:-derivation-ordered}
BUILD_DURATION=${RUN_FARM_BUILD_DURATION:-3s}
EXIT_AFTER_READY=${RUN_FARM_EXIT_AFTER_READY:-0}
TIMEOUT=${RUN_FARM_TIMEOUT:-180}

log() { printf 'run-farm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# One farm per state directory: a second `make run` would wipe the first one's etcd.
mkdir -p "$(dirname "$RUN")"
exec 9>"$RUN.lock"
flock -n 9 || die "another hack/run-farm.sh uses $RUN; stop it first (Ctrl-C) or set RUN_FARM_DIR"

hack/tools.sh kube etcd minio mc nix
for t in etcd kube-apiserver kubectl minio mc; do
  [ -x "$BIN/$t" ] || die "$BIN/$t is missing: run hack/tools.sh"
done
for t in nix-daemon nix-store nix-instantiate unshare nsenter; do
  command -v "$t" >/dev/null || die "$t is missing: run hack/tools.sh nix"
done
[ "$(id -u)" = 0 ] || die "make run needs root: its nix-daemons run in private mount namespaces with /gnu/store"
command -v openssl >/dev/null || die "openssl is needed for the apiserver's certificates"
command -v curl >/dev/null || die "curl is needed for readiness checks"
KUBECTL="$BIN/kubectl --kubeconfig=$RUN/kubeconfig"

log "building the controller, the agent and kubectl-guixfarm"
go build -o bin/guix-farm-controller ./cmd/guix-farm-controller
go build -o bin/guix-farm-agent ./cmd/guix-farm-agent
go build -o bin/kubectl-guixfarm ./cmd/kubectl-guixfarm
rm -rf "$RUN"
mkdir -p "$RUN/logs" "$RUN/bin" /gnu/store

# --- processes: started in the background, stopped in reverse order by the EXIT trap -----------------
PIDS=()
NAMES=()
# Children get their own session, so Ctrl-C reaches this script only and the farm stops in order
# (agents first, etcd last); they die with the script even if it is SIGKILLed (parent-death signal).
WRAP=(setsid)
if setpriv --help 2>/dev/null | grep -q pdeathsig; then WRAP+=(setpriv --pdeathsig KILL); fi

start() { # name command...
  local name=$1; shift
  "${WRAP[@]}" "$@" >"$RUN/logs/$name.log" 2>&1 </dev/null &
  PIDS+=($!)
  NAMES+=("$name")
  log "started $name (pid $!, log $RUN/logs/$name.log)"
}

stop_all() {
  local i pid n
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null || true
    for ((n = 0; n < 150; n++)); do # 15 s, then SIGKILL
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "${NAMES[i]} (pid $pid) ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    log "stopped ${NAMES[i]}"
  done
  PIDS=()
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ]; then
    for f in "$RUN"/logs/*.log; do
      [ -s "$f" ] || continue
      log "last lines of $f:"
      tail -n 15 "$f" >&2
    done
  fi
  stop_all
  exit "$rc"
}
trap on_exit EXIT
trap 'log "interrupted: stopping the farm"; exit 130' INT
trap 'exit 143' TERM

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
  local what=$1 secs=$2 deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what: not ready after ${secs}s"
    alive || die "$what: a process of the farm exited"
    sleep 0.2
  done
}

# alive: every started process still runs.
alive() {
  local i
  for i in "${!PIDS[@]}"; do
    kill -0 "${PIDS[i]}" 2>/dev/null || { log "${NAMES[i]} exited; see $RUN/logs/${NAMES[i]}.log"; return 1; }
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
USED_PORTS=" "
# pick_port DEFAULT: DEFAULT if nothing listens there, else the next free port above it.
pick_port() {
  local p=$1
  while ! port_free "$p" || [[ $USED_PORTS == *" $p "* ]]; do p=$((p + 1)); done
  USED_PORTS+="$p "
  echo "$p"
}
ETCD_PORT=$(pick_port 2379)
ETCD_PEER_PORT=$(pick_port 2380)
API_PORT=$(pick_port 6443)
MINIO_PORT=$(pick_port 9000)
MINIO_CONSOLE_PORT=$(pick_port 9001)
METRICS_PORT=$(pick_port 8080)
PROBE_PORT=$(pick_port 8081)
PUBLISHER_PORT=$(pick_port 8082)

# --- etcd + kube-apiserver ---------------------------------------------------------------------------
log "generating the apiserver's certificate, service-account keys and tokens"
(
  cd "$RUN"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout serving.key -out serving.crt -subj /CN=kube-apiserver \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1" 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
token() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
ADMIN_TOKEN=$(token)
CONTROLLER_TOKEN=$(token)
AGENT_TOKEN=$(token)
# The controller and agents authenticate as the ServiceAccounts they would run as in a cluster, so the
# same RoleBindings (config/manager, config/agent) apply to them.
cat >"$RUN/tokens.csv" <<EOF
$ADMIN_TOKEN,admin,admin,"system:masters"
$CONTROLLER_TOKEN,system:serviceaccount:$NS:guix-farm-controller,guix-farm-controller,"system:serviceaccounts,system:serviceaccounts:$NS"
$AGENT_TOKEN,system:serviceaccount:$NS:guix-farm-agent,guix-farm-agent,"system:serviceaccounts,system:serviceaccounts:$NS"
EOF
chmod 600 "$RUN/tokens.csv" "$RUN/serving.key" "$RUN/sa.key"

start etcd "$BIN/etcd" --name default --data-dir "$RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync
wait_for "etcd" 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

start kube-apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
  --secure-port="$API_PORT" --tls-cert-file="$RUN/serving.crt" --tls-private-key-file="$RUN/serving.key" \
  --token-auth-file="$RUN/tokens.csv" --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$RUN/sa.pub" \
  --service-account-signing-key-file="$RUN/sa.key" --service-cluster-ip-range=10.0.0.0/24 --cert-dir="$RUN/apiserver-certs"

# kubeconfig FILE USER TOKEN
kubeconfig() {
  local k="$BIN/kubectl --kubeconfig=$1"
  $k config set-cluster guix-farm --server="https://127.0.0.1:$API_PORT" --certificate-authority="$RUN/serving.crt" --embed-certs >/dev/null
  $k config set-credentials "$2" --token="$3" >/dev/null
  $k config set-context guix-farm --cluster=guix-farm --user="$2" --namespace="$NS" >/dev/null
  $k config use-context guix-farm >/dev/null
  chmod 600 "$1"
}
kubeconfig "$RUN/kubeconfig" admin "$ADMIN_TOKEN"
kubeconfig "$RUN/controller.kubeconfig" guix-farm-controller "$CONTROLLER_TOKEN"
kubeconfig "$RUN/agent.kubeconfig" guix-farm-agent "$AGENT_TOKEN"
wait_for "kube-apiserver /readyz" 60 $KUBECTL get --raw /readyz

# --- CRDs, RBAC, namespace, AgentPools ------------------------------------------------------------------
log "installing the CRDs and RBAC"
$KUBECTL apply --server-side -f config/crd/bases >/dev/null
$KUBECTL wait --for condition=established --timeout=60s -f config/crd/bases >/dev/null
$KUBECTL create namespace "$NS" >/dev/null
$KUBECTL apply -f config/rbac/controller/role.yaml -f config/rbac/agent/role.yaml >/dev/null
$KUBECTL -n "$NS" create serviceaccount guix-farm-controller >/dev/null
$KUBECTL -n "$NS" create rolebinding guix-farm-controller --clusterrole=guix-farm-controller \
  --serviceaccount="$NS:guix-farm-controller" >/dev/null
$KUBECTL apply -f config/agent/agent.yaml >/dev/null
# The controller's publisher service authenticates agents by TokenReviews.
$KUBECTL create clusterrolebinding guix-farm-controller-auth-delegator --clusterrole=system:auth-delegator \
  --serviceaccount="$NS:guix-farm-controller" >/dev/null
# kubectl apply needs discovery of the new CRDs; the first apply can race with it.
cat >"$RUN/agentpools.yaml" <<EOF
apiVersion: build.guixfarm.io/v1alpha1
kind: AgentPool
metadata: {name: x86-64, namespace: $NS}
spec: {systems: [x86_64-linux], replicas: 2, maxParallelBuilds: 2}
EOF
wait_for "AgentPools" 30 $KUBECTL apply -f "$RUN/agentpools.yaml"

# --- MinIO: the bucket is the substitute server ---------------------------------------------------------
MINIO_USER=farmadmin
MINIO_PASSWORD=$(token)
MINIO_URL="http://127.0.0.1:$MINIO_PORT"
start minio env MINIO_ROOT_USER="$MINIO_USER" MINIO_ROOT_PASSWORD="$MINIO_PASSWORD" MINIO_BROWSER=off \
  MINIO_UPDATE=off MINIO_CI_CD=1 "$BIN/minio" server "$RUN/minio-data" --quiet --address "127.0.0.1:$MINIO_PORT" \
  --console-address "127.0.0.1:$MINIO_CONSOLE_PORT"
wait_for "MinIO" 60 curl -sf "$MINIO_URL/minio/health/ready"
MC="$BIN/mc --config-dir $RUN/mc --quiet"
$MC alias set farm "$MINIO_URL" "$MINIO_USER" "$MINIO_PASSWORD" >/dev/null
$MC mb "farm/$BUCKET" >/dev/null
# Read for everyone, and list too: without s3:ListBucket a missing narinfo answers 403, which Guix
# takes for a transient error instead of "not cached" (docs/bucket.md).
cat >"$RUN/bucket-policy.json" <<EOF
{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::$BUCKET/*"]},
 {"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:ListBucket"],"Resource":["arn:aws:s3:::$BUCKET"]}]}
EOF
$MC anonymous set-json "$RUN/bucket-policy.json" "farm/$BUCKET" >/dev/null
printf 'StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 40\n' >"$RUN/nix-cache-info"
$MC cp "$RUN/nix-cache-info" "farm/$BUCKET/nix-cache-info" >/dev/null
code=$(curl -s -o /dev/null -w '%{http_code}' "$MINIO_URL/$BUCKET/00000000000000000000000000000000.narinfo")
[ "$code" = 404 ] || die "anonymous GET of a missing narinfo answered $code, want 404 (bucket policy)"
code=$(curl -s -o /dev/null -w '%{http_code}' "$MINIO_URL/$BUCKET/nix-cache-info")
[ "$code" = 200 ] || die "anonymous GET of nix-cache-info answered $code, want 200"

# --- signing keys: the controller's publisher signs what agents publish; clients trust the public keys ---
bin/guix-farm-controller keygen --name guix-farm-run --out "$RUN/keys" >"$RUN/logs/keygen.log"
NIX_PUB=$(cat "$RUN/keys/nix-public-key")
SIGNING_KEYS="$RUN/keys/nix-secret-key,$RUN/keys/guix-signing-key.sec"

# --- nix-daemons: each with its own /gnu/store, bind-mounted in a private mount namespace ---------------
# nixd NAME SUBSTITUTERS: the daemon's environment is built from scratch (NIX_REMOTE in it would make
# every worker connect back to the daemon: a fork bomb).
nixd() {
  local d=$RUN/nix/$1
  mkdir -p "$d"/{store,state,log,conf,home,cache}
  {
    echo "build-users-group ="
    echo "sandbox = true"
    echo "substituters = $2"
    echo "trusted-public-keys = $NIX_PUB"
    echo "require-sigs = true"
    echo "trusted-users = root"
    echo "narinfo-cache-negative-ttl = 0"
    echo "experimental-features = nix-command"
  } >"$d/conf/nix.conf"
  start "nix-daemon-$1" env -i PATH="$PATH" HOME="$d/home" XDG_CACHE_HOME="$d/cache" NIX_STORE_DIR=/gnu/store \
    NIX_STATE_DIR="$d/state" NIX_LOG_DIR="$d/log" NIX_CONF_DIR="$d/conf" \
    unshare -m --propagation private sh -c 'mount --bind "$1" /gnu/store && exec nix-daemon' sh "$d/store"
  wait_for "nix-daemon $1" 30 test -S "$d/state/daemon-socket/socket"
}
# in_nixd NAME COMMAND...: a nix client inside the daemon's mount namespace (Nix 2.8 clients read
# store files from their own /gnu/store view).
in_nixd() {
  local name=$1 d=$RUN/nix/$1 i pid=
  shift
  for i in "${!NAMES[@]}"; do [ "${NAMES[i]}" = "nix-daemon-$name" ] && pid=${PIDS[i]}; done
  nsenter -t "$pid" -m -- env -i PATH="$PATH" HOME="$d/home" NIX_STORE_DIR=/gnu/store NIX_STATE_DIR="$d/state" \
    NIX_LOG_DIR="$d/log" NIX_CONF_DIR="$d/conf" NIX_REMOTE="unix://$d/state/daemon-socket/socket" "$@"
}
CACHE_URL="$MINIO_URL/$BUCKET"
nixd submit ""
nixd agent-0 "$CACHE_URL"
nixd agent-1 "$CACHE_URL"

# --- the sample derivations: a small distribution built with a static busybox -------------------------
mkdir -p "$RUN/bbsrc/bin"
cp /bin/busybox "$RUN/bbsrc/bin/busybox"
BB=$(in_nixd submit nix-store --add "$RUN/bbsrc")
mapfile -t DRVS < <(in_nixd submit nix-instantiate "$ROOT/hack/sample-farm.nix" --argstr bb "$BB" \
  --argstr seconds "${BUILD_DURATION%s}" -A hello -A report)
log "instantiated ${#DRVS[@]} sample derivations in the submitter's store"

# The controller reads .drv files and output availability from the bucket, and serves the publisher:
# it alone holds the signing keys and the bucket's write credentials.
start controller env AWS_ACCESS_KEY_ID="$MINIO_USER" AWS_SECRET_ACCESS_KEY="$MINIO_PASSWORD" \
  bin/guix-farm-controller --kubeconfig="$RUN/controller.kubeconfig" --namespace="$NS" \
  --strategy="$STRATEGY" --build-ttl=24h --bucket-endpoint="$MINIO_URL" --bucket="$BUCKET" \
  --signing-keys="$SIGNING_KEYS" --publisher-bind-address="127.0.0.1:$PUBLISHER_PORT" \
  --publisher-token-audience=guix-farm-publisher --publisher-agent-service-accounts=guix-farm-agent \
  --metrics-bind-address="127.0.0.1:$METRICS_PORT" --health-probe-bind-address="127.0.0.1:$PROBE_PORT"
wait_for "controller /readyz" 60 curl -sf "http://127.0.0.1:$PROBE_PORT/readyz"
wait_for "publisher /healthz" 30 curl -sf "http://127.0.0.1:$PUBLISHER_PORT/healthz"

# An agent's identity for the publisher is its pod's: each agent gets a Pod object (never scheduled:
# there is no kubelet) and a token bound to it, for the publisher's audience, as a projected volume
# of an AgentPool pod holds. The agents get no key and no bucket credential.
agent() { # index
  local name=agent-x86-64-$1
  $KUBECTL -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $NS}
spec:
  serviceAccountName: guix-farm-agent
  automountServiceAccountToken: false
  containers: [{name: agent, image: guix-farm-agent:make-run}]
EOF
  $KUBECTL -n "$NS" create token guix-farm-agent --bound-object-kind=Pod --bound-object-name="$name" \
    --audience=guix-farm-publisher --duration=24h >"$RUN/$name.token"
  chmod 600 "$RUN/$name.token"
  start "agent-$1" env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY \
    bin/guix-farm-agent --kubeconfig="$RUN/agent.kubeconfig" --namespace="$NS" \
    --name="$name" --pool=x86-64 --systems=x86_64-linux --slots=2 --lease-duration=15s \
    --builder=daemon --daemon-socket="$RUN/nix/agent-$1/state/daemon-socket/socket" \
    --bucket-url="$MINIO_URL/$BUCKET" --trusted-public-keys="$NIX_PUB" \
    --publisher-url="http://127.0.0.1:$PUBLISHER_PORT" --publisher-token-file="$RUN/$name.token"
}
agent 0
agent 1

# Submit as a user would: the .drv closures go to the bucket, one Build per derivation (and per
# input whose outputs the bucket lacks).
env AWS_ACCESS_KEY_ID="$MINIO_USER" AWS_SECRET_ACCESS_KEY="$MINIO_PASSWORD" \
  bin/kubectl-guixfarm --kubeconfig="$RUN/kubeconfig" -n "$NS" submit --all-missing -l guixfarm.io/tag-sample=true \
  --daemon-socket="$RUN/nix/submit/state/daemon-socket/socket" --bucket-endpoint="$MINIO_URL" --bucket="$BUCKET" \
  --signing-keys="$SIGNING_KEYS" "${DRVS[@]}" | tee "$RUN/submitted.txt"
NBUILDS=$(grep -c '^build/' "$RUN/submitted.txt")
HELLO_DRV=${DRVS[0]}
HELLO_OUT=$(in_nixd submit nix-store -q --outputs "$HELLO_DRV")
HELLO_BUILD=$(grep -F " $HELLO_DRV" "$RUN/submitted.txt" | awk '{print $1}')
SUBST_CMD="env NIX_STORE_DIR=/gnu/store XDG_CACHE_HOME=\$PWD/fresh-cache nix-store --store local?root=\$PWD/fresh-store --option substituters $CACHE_URL --option trusted-public-keys '$NIX_PUB' --realise $HELLO_OUT"

cat <<EOF

guix-farm is running (state and logs in $RUN).

  export KUBECONFIG=$RUN/kubeconfig
  export PATH=$ROOT/bin:$BIN:\$PATH            # kubectl, and the kubectl guixfarm plugin
  export GUIXFARM_BUCKET_ENDPOINT=$MINIO_URL GUIXFARM_BUCKET=$BUCKET
  kubectl get builds -w                       # namespace $NS is the context's default
  kubectl wait --for=condition=Succeeded $HELLO_BUILD
  kubectl guixfarm logs ${HELLO_BUILD#build/}
  kubectl get agentpools,leases

The bucket is the substitute server: $CACHE_URL
Its public keys:
  nix:  $NIX_PUB
  guix: $RUN/keys/guix-signing-key.pub   (guix archive --authorize < that file)
Substitute the sample's top output into a fresh store with nix (signatures required):
  $SUBST_CMD
Controller metrics: http://127.0.0.1:$METRICS_PORT/metrics

EOF

if [ "$EXIT_AFTER_READY" = 1 ]; then
  log "waiting up to ${TIMEOUT}s for the sample Builds to succeed"
  if ! $KUBECTL -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded builds --all \
    --timeout="${TIMEOUT}s" >/dev/null; then
    $KUBECTL -n "$NS" get builds,agentpools >&2 || true
    die "the sample Builds did not all succeed within ${TIMEOUT}s"
  fi
  alive || die "a process of the farm exited"
  echo "Summary: all $NBUILDS sample Builds succeeded."
  $KUBECTL -n "$NS" get builds
  echo
  log "substituting $HELLO_OUT into a fresh store with nix, signatures required"
  mkdir -p "$RUN/fresh"
  # Its own narinfo cache: nix's default one (~/.cache/nix) remembers narinfos of earlier runs,
  # signed by their keys.
  (cd "$RUN/fresh" && env -u NIX_REMOTE NIX_STORE_DIR=/gnu/store NIX_CONF_DIR="$RUN/fresh" XDG_CACHE_HOME="$RUN/fresh/cache" nix-store \
    --store "local?root=$RUN/fresh/fresh-store" --option substituters "$CACHE_URL" \
    --option trusted-public-keys "$NIX_PUB" --realise "$HELLO_OUT") >"$RUN/logs/substitute.log" 2>&1 ||
    { cat "$RUN/logs/substitute.log" >&2; die "nix could not substitute $HELLO_OUT from the bucket"; }
  echo "Substituted from the bucket by nix into a fresh store: $HELLO_OUT"
  # A chroot store keeps its files under <root>/nix/store, whatever its logical store directory.
  echo "  it says: $(cat "$RUN/fresh/fresh-store/nix/store/$(basename "$HELLO_OUT")/share/hello.txt")"
  echo
  $KUBECTL -n "$NS" get agentpools
  exit 0
fi

log "press Ctrl-C to stop the farm"
while alive; do
  sleep 1 &
  wait $! || true
done
die "the farm stopped working"

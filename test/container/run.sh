#!/usr/bin/env bash
# Container test: proves the image runs without privileges.
#
# It builds the threshold image with podman from the Dockerfile, offline: the
# Go builder image is made here from the installed Go toolchain, and modules
# come from the host's module cache, served read-only as a file:// GOPROXY
# to a build that has no network at all. Then it runs a server container and
# a client container as README.md's "Deployment" section does (numeric
# non-root user, --read-only, --cap-drop=ALL, no-new-privileges), puts a
# tunnel through the management API, and sends traffic through the public
# port to a backend on the host's loopback that insists on a PROXY v1 header
# carrying the sender's own address. Traffic goes to 127.0.0.1 only (the
# containers share the host's network namespace).
#
# Exits 0 with a "SKIP" line when podman, buildah or runc cannot be installed
# or used here; any other failure exits non-zero. Everything it makes lives in
# one temp dir with podman's own storage, locks and temp files, so the host's
# podman state is never touched, and it is all removed on exit, even on
# failure (KEEP=1 keeps the dir; the containers and images are removed still).
#
#   bash test/container/run.sh        (as root: it installs Debian packages)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
export PATH="$PATH:/usr/local/go/bin"
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

T0=$(date +%s.%N)
timings=()
phase_start=$T0
phase() { # phase NAME: records how long the phase just finished took
	local now
	now=$(date +%s.%N)
	timings+=("$(awk -v a="$phase_start" -v b="$now" -v n="$1" 'BEGIN { printf "%-28s %6.1fs", n, b - a }')")
	phase_start=$now
}
say() { echo "container test: $*"; }
skip() {
	say "SKIP: $*"
	exit 0
}
die() {
	say "FAIL: $*" >&2
	exit 1
}

# --- can podman, buildah and runc be had? ---
[ "$(uname -s)" = Linux ] || skip "containers need Linux, this is $(uname -s)"
[ "$(id -u)" = 0 ] || skip "run as root: the test installs podman, buildah and runc from Debian and runs rootful podman (the containers themselves run as uid 65532 with no capability)"
command -v go >/dev/null || skip "no Go toolchain to make the builder image from"
need=()
for tool in podman buildah runc; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ "${#need[@]}" -gt 0 ]; then
	command -v apt-get >/dev/null || skip "${need[*]} missing and no apt-get to install them"
	say "installing ${need[*]} (Debian packages)"
	if ! timeout 300 apt-get update -qq >/dev/null 2>&1 ||
		! DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
		skip "could not install ${need[*]} with apt-get"
	fi
	for tool in podman buildah runc; do command -v "$tool" >/dev/null || skip "$tool still missing after apt-get install"; done
fi
phase "install tools"

# --- a private podman world in one temp dir ---
# (containers/image keeps a blob cache in /var/lib/containers/cache whatever
# the storage root: if that did not exist before, it goes again at the end.)
[ -e /var/lib/containers ] && had_var_lib_containers=1 || had_var_lib_containers=
WORK=$(mktemp -d /tmp/threshold-container.XXXXXX)
chmod 755 "$WORK"
RUN_ID=$(basename "$WORK" | tr 'A-Z.' 'a-z-')
IMAGE=localhost/threshold-test:$RUN_ID
BUILDER=localhost/threshold-go-builder:$RUN_ID
SERVER=$RUN_ID-server
CLIENT=$RUN_ID-client
BACKEND_PID=

cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
lock_type = "file"
tmp_dir = "$WORK/libpod-tmp"
image_copy_tmp_dir = "storage"
EOF
write_storage_conf() {
	cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "$1"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
}
write_storage_conf overlay
: >"$WORK/registries.conf" # no registry: nothing is ever pulled
export CONTAINERS_CONF=$WORK/containers.conf
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf
export CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR"
# Every podman and buildah call is bounded; timeout runs the real binaries.
podman() { timeout 300 podman --runtime runc "$@"; }
buildah() { timeout 300 buildah "$@"; }

cleanup() {
	local status=$?
	set +e
	trap - EXIT INT TERM
	if [ "$status" != 0 ]; then
		for c in "$SERVER" "$CLIENT"; do
			if podman container exists "$c" 2>/dev/null; then
				echo "--- logs of container $c ---"
				podman logs "$c" 2>&1 | tail -40
			fi
		done
		[ -f "$WORK/backend.log" ] && echo "--- backend log ---" && cat "$WORK/backend.log"
	fi
	[ -n "$BACKEND_PID" ] && kill "$BACKEND_PID" 2>/dev/null && wait "$BACKEND_PID" 2>/dev/null
	podman rm --force --time 5 "$SERVER" "$CLIENT" >/dev/null 2>&1
	podman volume rm --force "$SERVER-state" "$CLIENT-state" >/dev/null 2>&1
	buildah rm --all >/dev/null 2>&1
	podman rmi --force "$IMAGE" "$BUILDER" >/dev/null 2>&1
	podman image prune --all --force >/dev/null 2>&1
	left=$(podman ps --all --quiet 2>/dev/null; podman images --quiet 2>/dev/null)
	[ -n "$left" ] && say "warning: left in the private store: $left"
	if [ -z "$had_var_lib_containers" ]; then
		rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb
		rmdir /var/lib/containers/cache /var/lib/containers 2>/dev/null
	fi
	# Anything still mounted under WORK is unmounted before WORK goes.
	for m in $(awk -v w="$WORK" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
	if [ -n "${KEEP:-}" ]; then
		say "kept $WORK"
	elif awk -v w="$WORK" 'index($5, w) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
		say "warning: $WORK still has mounts; not removing it"
	else
		rm -rf "$WORK"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the builder image, from the installed Go toolchain ---
# /usr/local/go plus a minimal userland copied from this Debian host (sh and
# mkdir and chown for the Dockerfile's RUN lines, with the libraries ldd names). The
# final image does not contain any of it.
GOROOT_DIR=$(go env GOROOT)
GO_VERSION=$(go env GOVERSION)
ROOTFS=$WORK/builder-rootfs
mkdir -p "$ROOTFS"/{bin,etc,root,go,src} "$ROOTFS/tmp"
chmod 1777 "$ROOTFS/tmp"
for tool in sh mkdir chown cat ls cp rm env; do
	src=$(readlink -f "$(command -v "$tool")")
	cp "$src" "$ROOTFS/bin/$tool"
	for lib in $(ldd "$src" | grep -oE '/[^ ]+'); do
		mkdir -p "$ROOTFS$(dirname "$lib")"
		cp -L "$lib" "$ROOTFS$lib"
	done
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOTFS/etc/passwd"
echo 'root:x:0:' >"$ROOTFS/etc/group"

if ! ctr=$(buildah from scratch 2>"$WORK/probe.err"); then
	say "overlay storage is unusable here ($(tail -1 "$WORK/probe.err")); trying vfs"
	write_storage_conf vfs
	ctr=$(buildah from scratch 2>"$WORK/probe.err") || skip "buildah cannot make a container here: $(tail -1 "$WORK/probe.err")"
fi
buildah copy --quiet "$ctr" "$ROOTFS/" / >/dev/null
buildah copy --quiet "$ctr" "$GOROOT_DIR" /usr/local/go >/dev/null
buildah config --env PATH=/usr/local/go/bin:/go/bin:/bin --env HOME=/root --env GOPATH=/go \
	--env GOTOOLCHAIN=local --env GOPROXY=file:///goproxy --env GOSUMDB=off \
	--workingdir /src "$ctr"
buildah commit --quiet "$ctr" "$BUILDER" >/dev/null
buildah rm "$ctr" >/dev/null
if ! probe=$(podman run --rm --network none "$BUILDER" go version 2>&1); then
	skip "podman cannot run a container here: $(echo "$probe" | tail -1)"
fi
say "builder image $BUILDER: $probe (storage driver $(podman info --format '{{.Store.GraphDriverName}}'))"
phase "builder image"

# --- the threshold image, built with no network ---
# The host fills its module cache (it can reach the Go module proxy); the
# build reads the cache's download dir, read-only, as a file:// GOPROXY.
# GOSUMDB=off is safe there: go.sum still checks every module.
timeout 300 go mod download
MODCACHE=$(go env GOMODCACHE)/cache/download
[ -d "$MODCACHE" ] || die "no module download cache at $MODCACHE"
VERSION="container-test-$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)"
podman build --pull=never --network none --layers=false \
	--volume "$MODCACHE:/goproxy:ro" \
	--build-arg GO_IMAGE="$BUILDER" --build-arg VERSION="$VERSION" \
	--file "$REPO/Dockerfile" --tag "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1 ||
	{ tail -30 "$WORK/build.log"; die "podman build failed"; }
phase "image build"

# --- what the image is ---
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image $IMAGE: $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN { printf "%.1f", s / 1048576 }') MiB)"
cfg=$(podman image inspect --format 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} volumes={{.Config.Volumes}} ports={{.Config.ExposedPorts}}' "$IMAGE")
say "image config: $cfg"
for want in 'user=65532:65532' 'entrypoint=[threshold]' '/var/lib/threshold:{}' '9056/udp:{}' '9057/tcp:{}'; do
	[[ $cfg == *"$want"* ]] || die "image config lacks $want"
done
# Its whole file tree: the binary, the state dir (owned by 65532), the config dir.
mnt=$(podman image mount "$IMAGE")
files=$(cd "$mnt" && find . -mindepth 1 -printf '%p %U:%G %m\n' | sort)
podman image unmount "$IMAGE" >/dev/null
echo "$files" | sed 's/^/    /'
want_files='./etc 0:0 755
./etc/threshold 0:0 755
./usr 0:0 755
./usr/local 0:0 755
./usr/local/bin 0:0 755
./usr/local/bin/threshold 0:0 755
./var 0:0 755
./var/lib 0:0 755
./var/lib/threshold 65532:65532 755'
[ "$files" = "$want_files" ] || die "unexpected files in the image"
(cd "$REPO" && go build -o "$WORK/proxycheck" ./test/container/proxycheck)
mnt=$(podman image mount "$IMAGE")
"$WORK/proxycheck" static "$mnt/usr/local/bin/threshold" | sed "s|$mnt|image:|"
podman image unmount "$IMAGE" >/dev/null
got=$(podman run --rm --network none --read-only --cap-drop=ALL --security-opt no-new-privileges "$IMAGE" version)
[ "$got" = "threshold $VERSION" ] || die "threshold version says \"$got\", want \"threshold $VERSION\""
say "$got"
phase "image checks"

# --- server and client containers, unprivileged ---
# Exactly the flags README.md's "Deployment" section gives.
HARDENED=(--user 65532:65532 --read-only --cap-drop=ALL --security-opt no-new-privileges --network host)
TUNNEL_PORT=$("$WORK/proxycheck" port udp)
MGMT_PORT=$("$WORK/proxycheck" port tcp)
PUBLIC_PORT=$("$WORK/proxycheck" port tcp)
API=http://127.0.0.1:$MGMT_PORT

"$WORK/proxycheck" backend "$WORK/backend.addr" >"$WORK/backend.log" 2>&1 &
BACKEND_PID=$!
for _ in $(seq 50); do [ -s "$WORK/backend.addr" ] && break; sleep 0.1; done
[ -s "$WORK/backend.addr" ] || die "the backend did not start"
BACKEND_ADDR=$(cat "$WORK/backend.addr")

# Config files are read-only mounts, readable by uid 65532; keys are not in
# them: each side generates its key into its state volume (StateDir) on first
# start, and the server keeps its clients and tunnels there.
mkdir -m 755 "$WORK/etc"
cat >"$WORK/etc/server.json" <<EOF
{
  "TunnelControlPort": $TUNNEL_PORT,
  "ManagementPort": $MGMT_PORT,
  "ManagementAddress": "127.0.0.1",
  "StateDir": "/var/lib/threshold"
}
EOF
chmod 644 "$WORK/etc/server.json"

running() { [ "$(podman inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
# public_key NAME: the key a container logged at its last start (text or
# JSON logs; slog quotes a value that holds "=").
public_key() {
	podman logs "$1" 2>&1 | sed -n 's/.*[^_]public_key"\{0,1\}[=:]"\{0,1\}\([A-Za-z0-9+\/=]\{44\}\).*/\1/p' | tail -1
}
wait_key() { # wait_key NAME: prints the public key the container logged
	local key
	for _ in $(seq 100); do
		running "$1" || die "container $1 stopped"
		key=$(public_key "$1")
		[ -n "$key" ] && echo "$key" && return
		sleep 0.2
	done
	die "container $1 logged no public key within 20 s"
}
# check_unprivileged NAME: the process, seen from the host, runs as 65532
# with no capability at all and no way to gain one.
check_unprivileged() {
	local pid status
	pid=$(podman inspect --format '{{.State.Pid}}' "$1")
	status=$(cat "/proc/$pid/status")
	grep -qE '^Uid:\s+65532\s+65532\s+65532\s+65532$' <<<"$status" || die "$1: $(grep ^Uid <<<"$status")"
	grep -qE '^Gid:\s+65532\s+65532\s+65532\s+65532$' <<<"$status" || die "$1: $(grep ^Gid <<<"$status")"
	for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
		grep -qE "^$cap:\s+0000000000000000$" <<<"$status" || die "$1: $(grep "^$cap" <<<"$status")"
	done
	grep -qE '^NoNewPrivs:\s+1$' <<<"$status" || die "$1: $(grep ^NoNewPrivs <<<"$status")"
	say "$1 (host pid $pid): uid/gid 65532, every capability set empty, NoNewPrivs 1, Seccomp $(awk '/^Seccomp:/ { print $2 }' <<<"$status")"
}

podman run --detach --name "$SERVER" "${HARDENED[@]}" \
	--volume "$SERVER-state:/var/lib/threshold" --volume "$WORK/etc:/etc/threshold:ro" \
	--env THRESHOLD_CONFIG=/etc/threshold/server.json "$IMAGE" server >/dev/null
SERVER_KEY=$(wait_key "$SERVER")
wait_api() {
	for i in $(seq 100); do
		"$WORK/proxycheck" api GET "$API/healthz" >/dev/null 2>&1 && return
		running "$SERVER" || die "the server container stopped"
		[ "$i" = 100 ] && die "the management API did not answer within 20 s"
		sleep 0.2
	done
}
wait_api
check_unprivileged "$SERVER"
# The key was generated into the state volume, by and for uid 65532 only.
vol=$(podman volume inspect --format '{{.Mountpoint}}' "$SERVER-state")
key_stat=$(stat -c '%u:%g %a' "$vol/server.key")
[ "$key_stat" = "65532:65532 600" ] || die "server.key in the state volume: $key_stat, want 65532:65532 600"
say "server up, key generated into its state volume (65532:65532 600), public key $SERVER_KEY"
phase "server container"

cat >"$WORK/etc/client.json" <<EOF
{
  "ClientId": "TestClient1",
  "ServerHost": "127.0.0.1",
  "ServerTunnelControlPort": $TUNNEL_PORT,
  "ServerPublicKey": "$SERVER_KEY",
  "StateDir": "/var/lib/threshold",
  "ServiceToLocalAddrMap": { "fooService": "$BACKEND_ADDR" },
  "ProxySourceAllowCIDRs": ["127.0.0.0/8"]
}
EOF
chmod 644 "$WORK/etc/client.json"
podman run --detach --name "$CLIENT" "${HARDENED[@]}" \
	--volume "$CLIENT-state:/var/lib/threshold" --volume "$WORK/etc:/etc/threshold:ro" \
	"$IMAGE" client --config /etc/threshold/client.json >/dev/null
CLIENT_KEY=$(wait_key "$CLIENT")
check_unprivileged "$CLIENT"
"$WORK/proxycheck" api PUT "$API/clients/TestClient1" "{\"PublicKey\":\"$CLIENT_KEY\"}" >/dev/null
wait_connected() {
	for i in $(seq 150); do
		clients=$("$WORK/proxycheck" api GET "$API/clients" 2>/dev/null || true)
		[[ $clients == *'"CurrentState":"ClientConnected"'* ]] && return
		running "$CLIENT" || die "the client container stopped"
		[ "$i" = 150 ] && die "the client did not connect within 30 s: $clients"
		sleep 0.2
	done
}
wait_connected
say "client connected: $clients"
phase "client connects"

tunnels="[{\"HaProxyProxyProtocol\":true,\"ListenAddress\":\"127.0.0.1\",\"ListenHostnameGlob\":\"*\",\"ListenPort\":$PUBLIC_PORT,\"BackEndService\":\"fooService\",\"ClientId\":\"TestClient1\"}]"
say "PUT /tunnels: $("$WORK/proxycheck" api PUT "$API/tunnels" "$tunnels")"
send_through() {
	for i in $(seq 10); do
		if out=$("$WORK/proxycheck" send "127.0.0.1:$PUBLIC_PORT" 2>&1); then
			say "$out"
			return
		fi
		[ "$i" = 10 ] && die "no good reply through the tunnel after 10 tries: $out"
		sleep 0.5
	done
}
send_through
grep -q "carried PROXY v1 source 127.0.0.1:" "$WORK/backend.log" || die "the backend log shows no PROXY v1 source"
phase "traffic through the tunnel"

# The state volume is the only writable place, and it is enough: the server
# saved its clients and tunnels there, and a restarted server (same volume,
# read-only root) restores them with no API call and keeps its key.
state_stat=$(stat -c '%u:%g %a' "$vol/state.json" 2>/dev/null || echo missing)
[ "$state_stat" = "65532:65532 600" ] || die "state.json in the state volume: $state_stat, want 65532:65532 600"
podman restart --time 10 "$SERVER" >/dev/null
wait_api
[ "$(public_key "$SERVER")" = "$SERVER_KEY" ] || die "the restarted server has another key: $(public_key "$SERVER")"
check_unprivileged "$SERVER"
wait_connected
send_through
say "the restarted server restored the client and the tunnel from its volume"
phase "server restart"

# Both stop cleanly on SIGTERM (podman stop), as under any supervisor.
podman stop --time 10 "$CLIENT" "$SERVER" >/dev/null
for c in "$SERVER" "$CLIENT"; do
	code=$(podman inspect --format '{{.State.ExitCode}}' "$c")
	[ "$code" = 0 ] || die "$c exited with $code after SIGTERM"
done
phase "clean stop"

say "timings:"
printf '    %s\n' "${timings[@]}"
awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "    %-28s %6.1fs\n", "total", b - a }'
say "PASS: image of $SIZE bytes; server and client ran as uid 65532 with no capability, read-only, and the backend saw the sender's address"

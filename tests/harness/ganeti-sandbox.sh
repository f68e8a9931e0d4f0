#!/usr/bin/env bash
# ganeti-sandbox.sh: a real single-node Ganeti 3.0 cluster for snf-watcher's end-to-end tests.
#
# Usage (as root):  ganeti-sandbox.sh up | down | destroy | status | exec CMD [ARG...]
#
#   up       install the Debian `ganeti` package if it is missing, start the sandbox
#            namespaces, then `gnt-cluster init` (first time) or restart the daemons.
#            Safe to repeat.
#   down     stop the Ganeti daemons, every other process in the sandbox's network
#            namespace and the namespace itself, each by PID. The cluster state in
#            /var/lib/ganeti stays, so the next `up` restarts the same cluster.
#   destroy  `down`, then remove all cluster state; the next `up` initialises afresh.
#   status   what runs; exits 0 when the cluster answers, 1 otherwise.
#   exec     run a command inside the sandbox (hostname, addresses, daemons' view).
#
# The layout:
#   - The hypervisor is Ganeti's `fake` one: a "running" instance is a file under
#     /var/run/ganeti/fake-hypervisor/. Disk templates: diskless, file, sharedfile.
#     The OS is a no-op definition, /srv/ganeti/os/noop (use `-o noop+default`).
#   - Ganeti wants the node's name to resolve to an address the node owns, and the
#     cluster name to a second, unused one. So all Ganeti daemons run in private
#     network + UTS + mount namespaces, kept alive by a `sleep infinity` process
#     (the "holder"). Inside: hostname $SANDBOX_NODE, a veth pair whose end
#     $SANDBOX_NETDEV holds the node address (and, once the master role is
#     active, the cluster address), an empty bridge $SANDBOX_BRIDGE for instance
#     NICs, private bind-mounted /etc/hosts and /etc/resolv.conf (no DNS leaves
#     the namespace), and a re-mounted /sys so Ganeti's bridge check sees the
#     namespace's interfaces. Nothing touches the host's network.
#   - The filesystem is shared, so from the host namespace you can read the job
#     queue, the ssconf files and the logs, and the `gnt-*` commands work too (they
#     talk to luxid over a unix socket). `ganeti-watcher` and daemon-util compare
#     the hostname with the master's name and start daemons: run them via `exec`.
#
# Environment (defaults in brackets):
#   SANDBOX_STATE_DIR   [/run/snf-ganeti-sandbox]  pid files, generated files, logs
#   SANDBOX_NODE        [node1.ganeti.test]        SANDBOX_NODE_IP    [198.51.100.10]
#   SANDBOX_CLUSTER     [cluster.ganeti.test]      SANDBOX_CLUSTER_IP [198.51.100.100]
#   SANDBOX_PREFIXLEN   [24]    SANDBOX_NETDEV [gnt0]    SANDBOX_BRIDGE [gnt-br0]
#   SANDBOX_RAPI_USER / SANDBOX_RAPI_PASSWORD  [snf-e2e / snf-e2e-secret]  RAPI write user
#   SANDBOX_RAPI_FORWARD_PORT  [empty = off]   when set, a socat process in the host
#                       namespace forwards 127.0.0.1:<port> to the sandbox's RAPI (:5080)
#   SANDBOX_FORCE       [0]  1: let `destroy` wipe a cluster this script did not create
#
# Safety: this script owns /var/lib/ganeti while it runs. It refuses to touch a cluster
# it did not initialise (the marker is $MARKER) and a Ganeti whose daemons run in the
# host's own network namespace (a real installation).

set -eu -o pipefail

STATE_DIR=${SANDBOX_STATE_DIR:-/run/snf-ganeti-sandbox}
NODE=${SANDBOX_NODE:-node1.ganeti.test}
NODE_IP=${SANDBOX_NODE_IP:-198.51.100.10}
CLUSTER=${SANDBOX_CLUSTER:-cluster.ganeti.test}
CLUSTER_IP=${SANDBOX_CLUSTER_IP:-198.51.100.100}
PREFIXLEN=${SANDBOX_PREFIXLEN:-24}
NETDEV=${SANDBOX_NETDEV:-gnt0}
BRIDGE=${SANDBOX_BRIDGE:-gnt-br0}
RAPI_USER=${SANDBOX_RAPI_USER:-snf-e2e}
RAPI_PASSWORD=${SANDBOX_RAPI_PASSWORD:-snf-e2e-secret}
RAPI_FORWARD_PORT=${SANDBOX_RAPI_FORWARD_PORT:-}
FORCE=${SANDBOX_FORCE:-0}

GANETI_LIB=/var/lib/ganeti
GANETI_RUN=/var/run/ganeti
DAEMON_UTIL=/usr/lib/ganeti/daemon-util
MARKER=/etc/ganeti/snf-ganeti-sandbox
OS_DIR=/srv/ganeti/os/noop
FILE_STORAGE=/srv/ganeti/file-storage
SHARED_FILE_STORAGE=/srv/ganeti/shared-file-storage
STORAGE_PATHS=/etc/ganeti/file-storage-paths
HOOKS_DIR=/etc/ganeti/hooks
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

say() { printf '[ganeti-sandbox] %s\n' "$*" >&2; }
fail() {
	say "ERROR: $*"
	exit 1
}

# ---------------------------------------------------------------- processes

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

netns_of() { readlink "/proc/$1/ns/net" 2>/dev/null || true; }

# The holder's PID, if it runs and really is our namespace holder.
holder() {
	local pid state
	pid=$(cat "$STATE_DIR/holder.pid" 2>/dev/null) || return 1
	alive "$pid" || return 1
	[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" = "sleep infinity " ] || return 1
	state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
	[ "$state" != Z ] || return 1
	[ "$(netns_of "$pid")" != "$(netns_of $$)" ] || return 1
	echo "$pid"
}

# Run a command inside the sandbox namespaces (never hand down the lock's fd).
in_sandbox() {
	local pid
	pid=$(holder) || fail "the sandbox is not up (run: $0 up)"
	nsenter --target "$pid" --net --uts --mount -- "$@" 9>&-
}

# TERM the given PIDs, wait up to $1 seconds for all of them, then KILL what is left.
stop_pids() {
	local grace=$1 pid left i
	shift
	[ $# -gt 0 ] || return 0
	kill -TERM "$@" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		left=()
		for pid in "$@"; do alive "$pid" && left+=("$pid"); done
		[ ${#left[@]} -gt 0 ] || return 0
		sleep 0.1
	done
	say "still running after ${grace}s, killing: ${left[*]}"
	kill -KILL "${left[@]}" 2>/dev/null || true
	for pid in "${left[@]}"; do
		for ((i = 0; i < 50; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
	done
}

# Run "$@" in the background in a new session, its PID in the file $1, its output
# in the file $2, and no file descriptor but 0-2 open: neither our lock nor a
# caller's pipe may stay open in a process that outlives this script.
spawn_detached() {
	local pidfile=$1 log=$2
	shift 2
	setsid bash -c 'echo $$ >"$0"; for fd in /proc/$$/fd/*; do
		fd=${fd##*/}; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
	done; exec "$@"' "$pidfile" "$@" </dev/null >"$log" 2>&1 &
}

# PIDs of live processes named in Ganeti's daemon pid files.
ganeti_daemon_pids() {
	local f pid
	for f in "$GANETI_RUN"/ganeti-*.pid; do
		[ -e "$f" ] || continue
		pid=$(cat "$f" 2>/dev/null) || continue
		alive "$pid" && echo "$pid"
	done
	return 0
}

# PIDs of every process in the network namespace $1 (an ns link like net:[4026532...]).
pids_in_netns() {
	local ns=$1 d
	[ -n "$ns" ] || return 0
	for d in /proc/[0-9]*; do
		[ "$(readlink "$d/ns/net" 2>/dev/null)" = "$ns" ] && echo "${d#/proc/}"
	done
	return 0
}

# Stop Ganeti daemons (PIDs given), then every other process left in their network
# namespaces except $keep. Only namespaces that hold one of these daemons are swept
# (a recorded namespace id could have been reused by someone else's namespace).
stop_daemons_and_namespaces() {
	local keep=$1 pid d namespaces=() others=()
	shift
	[ $# -gt 0 ] || return 0
	for pid in "$@"; do namespaces+=("$(netns_of "$pid")"); done
	say "stopping Ganeti daemons: $*"
	stop_pids 30 "$@"
	for ns in $(printf '%s\n' "${namespaces[@]}" | sort -u); do
		for d in $(pids_in_netns "$ns"); do
			[ "$d" = "$keep" ] || others+=("$d")
		done
	done
	if [ ${#others[@]} -gt 0 ]; then
		say "stopping the other processes left in the sandbox namespace: ${others[*]}"
		stop_pids 10 "${others[@]}"
	fi
}

# Refuse to run next to a Ganeti whose daemons live in the host's namespace.
refuse_host_ganeti() {
	local pid host
	host=$(netns_of $$)
	for pid in $(ganeti_daemon_pids); do
		if [ "$(netns_of "$pid")" = "$host" ]; then
			fail "Ganeti daemon pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) runs in the host's" \
				"network namespace: this machine runs a real Ganeti; the sandbox will not touch it"
		fi
	done
}

# ---------------------------------------------------------------- packages

install_packages() {
	local need=0 added_policy=0
	dpkg-query -W -f='${Status}' ganeti 2>/dev/null | grep -q 'install ok installed' || need=1
	for cmd in unshare nsenter setsid ip socat start-stop-daemon; do
		command -v "$cmd" >/dev/null || need=1
	done
	[ $need = 1 ] || return 0
	command -v apt-get >/dev/null || fail "the ganeti package is missing and there is no apt-get"
	say "installing the Debian packages ganeti, socat, iproute2, util-linux"
	# Keep apt from starting Ganeti's services in the host namespace.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\n# temporary, from ganeti-sandbox.sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		added_policy=1
	fi
	local rc=0
	{
		apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
				ganeti socat iproute2 util-linux
	} >&2 || rc=$?
	[ $added_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
	[ $rc = 0 ] || fail "apt-get install ganeti failed (exit $rc)"
	dpkg-query -W -f='${Version}' ganeti | grep -q '^3\.0\.' ||
		say "warning: ganeti $(dpkg-query -W -f='${Version}' ganeti) is not 3.0.x; the tests expect 3.0.2"
}

# ---------------------------------------------------------------- namespace

start_namespace() {
	local pid i
	if pid=$(holder); then
		say "namespace holder already running (pid $pid)"
		return 0
	fi
	mkdir -p "$STATE_DIR"
	rm -f "$STATE_DIR/holder.pid" "$STATE_DIR/ready"
	printf '127.0.0.1\tlocalhost\n%s\t%s %s\n%s\t%s %s\n' \
		"$NODE_IP" "$NODE" "${NODE%%.*}" "$CLUSTER_IP" "$CLUSTER" "${CLUSTER%%.*}" >"$STATE_DIR/hosts"
	printf 'nameserver 127.0.0.1\n' >"$STATE_DIR/resolv.conf"
	# First process of the new namespaces: set them up, then become the holder.
	cat >"$STATE_DIR/holder.sh" <<EOF
#!/bin/bash
set -eu
mount --bind "$STATE_DIR/hosts" /etc/hosts
mount --bind "$STATE_DIR/resolv.conf" /etc/resolv.conf
# sysfs shows the network devices of the namespace that mounted it
umount -l /sys
mount -t sysfs sysfs /sys
# daemon-util hands daemons to systemd when it sees it; here they must start in
# this namespace, so hide systemd from everything in it
if [ -d /run/systemd/system ]; then mount -t tmpfs -o size=64k,mode=755 sandbox /run/systemd/system; fi
hostname "$NODE"
ip link set lo up
# no 'dummy' driver everywhere: a veth pair, both ends in here
ip link add "$NETDEV" type veth peer name "$NETDEV-peer"
ip addr add "$NODE_IP/$PREFIXLEN" dev "$NETDEV"
ip link set "$NETDEV-peer" up
ip link set "$NETDEV" up
ip link add "$BRIDGE" type bridge
ip link set "$BRIDGE" up
touch "$STATE_DIR/ready"
exec sleep infinity
EOF
	chmod 700 "$STATE_DIR/holder.sh"
	spawn_detached "$STATE_DIR/holder.pid" "$STATE_DIR/holder.log" \
		unshare --net --uts --mount --propagation private -- "$STATE_DIR/holder.sh"
	for ((i = 0; i < 100; i++)); do
		[ -e "$STATE_DIR/ready" ] && holder >/dev/null && break
		sleep 0.1
	done
	pid=$(holder) || fail "cannot create the sandbox namespaces: $(cat "$STATE_DIR/holder.log")"
	say "namespace holder started (pid $pid, $(netns_of "$pid"))"
}

# ---------------------------------------------------------------- files

write_files() {
	local s
	mkdir -p "$OS_DIR" "$FILE_STORAGE" "$SHARED_FILE_STORAGE" "$HOOKS_DIR"
	echo 20 >"$OS_DIR/ganeti_api_version"
	echo default >"$OS_DIR/variants.list"
	: >"$OS_DIR/parameters.list"
	for s in create import export rename verify; do
		printf '#!/bin/sh\n# no-op OS script of the snf-watcher Ganeti sandbox\nexit 0\n' >"$OS_DIR/$s"
		chmod 755 "$OS_DIR/$s"
	done
	# file and sharedfile storage directories must be listed here
	if [ ! -e "$STORAGE_PATHS" ]; then
		printf '# written by ganeti-sandbox.sh\n%s\n%s\n' "$FILE_STORAGE" "$SHARED_FILE_STORAGE" \
			>"$STORAGE_PATHS"
	else
		grep -qx "$FILE_STORAGE" "$STORAGE_PATHS" || echo "$FILE_STORAGE" >>"$STORAGE_PATHS"
		grep -qx "$SHARED_FILE_STORAGE" "$STORAGE_PATHS" || echo "$SHARED_FILE_STORAGE" >>"$STORAGE_PATHS"
	fi
}

write_rapi_users() {
	mkdir -p "$GANETI_LIB/rapi"
	printf '%s {CLEARTEXT}%s write,read\n' "$RAPI_USER" "$RAPI_PASSWORD" >"$GANETI_LIB/rapi/users.new"
	chown gnt-rapi:gnt-masterd "$GANETI_LIB/rapi/users.new" 2>/dev/null || true
	chmod 640 "$GANETI_LIB/rapi/users.new"
	mv -f "$GANETI_LIB/rapi/users.new" "$GANETI_LIB/rapi/users" # ganeti-rapi rereads it by itself
}

# ---------------------------------------------------------------- cluster

cluster_exists() { [ -s "$GANETI_LIB/config.data" ]; }

check_ownership() {
	cluster_exists || return 0
	local name
	name=$(cat "$GANETI_LIB/ssconf_cluster_name" 2>/dev/null || echo '?')
	if [ ! -e "$MARKER" ] || [ "$name" != "$CLUSTER" ]; then
		[ "$FORCE" = 1 ] && return 0
		fail "$GANETI_LIB holds cluster '$name', which this script did not create" \
			"(no $MARKER, or another name); set SANDBOX_FORCE=1 to let destroy wipe it"
	fi
}

# Daemons left running in an older sandbox namespace (the holder died): stop them.
stop_stale_daemons() {
	local ns pid stale=()
	ns=$(netns_of "$(holder)")
	for pid in $(ganeti_daemon_pids); do
		[ "$(netns_of "$pid")" = "$ns" ] || stale+=("$pid")
	done
	[ ${#stale[@]} -gt 0 ] || return 0
	say "Ganeti daemons are left in an old namespace"
	stop_daemons_and_namespaces "" "${stale[@]}"
}

wait_for_master() {
	local i
	for ((i = 0; i < 120; i++)); do
		in_sandbox gnt-cluster getmaster >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	fail "the Ganeti master daemons did not answer within 60s (see /var/log/ganeti/)"
}

# Let the jobs submitted so far (job 1 is init's OP_CLUSTER_POST_INIT) finish.
wait_for_idle_queue() {
	local i busy
	for ((i = 0; i < 120; i++)); do
		busy=$(gnt-job list --no-headers -o status 2>/dev/null | grep -cvE '^(success|error|canceled)$' || true)
		[ "$busy" = 0 ] && return 0
		sleep 0.5
	done
	say "warning: jobs still unfinished after 60s: $(gnt-job list --no-headers 2>&1 | tr '\n' ';')"
}

# The cluster address lived on the veth of the previous namespace. The master
# daemons add it again when they start (master-ip-setup takes a few seconds:
# it first makes sure nobody answers on it); only if that does not happen, ask.
ensure_master_ip() {
	local i
	for ((i = 0; i < 30; i++)); do
		in_sandbox ip -o addr show dev "$NETDEV" | grep -q " $CLUSTER_IP/" && return 0
		sleep 0.5
	done
	in_sandbox gnt-cluster activate-master-ip >&2 || say "warning: activate-master-ip failed"
}

init_cluster() {
	say "gnt-cluster init $CLUSTER"
	printf 'Ganeti cluster %s created by snf-watcher tests/harness/ganeti-sandbox.sh\n' "$CLUSTER" >"$MARKER"
	# --no-ssh-init: leave /root/.ssh alone (a single node needs no ssh);
	# --no-etc-hosts: /etc/hosts is the namespace's private copy anyway;
	# ipolicy bounds relaxed so that tiny instances (32 MiB, 1 MiB disks) pass.
	in_sandbox gnt-cluster init \
		--enabled-hypervisors=fake \
		--enabled-disk-templates=diskless,file,sharedfile \
		--file-storage-dir="$FILE_STORAGE" \
		--shared-file-storage-dir="$SHARED_FILE_STORAGE" \
		--master-netdev="$NETDEV" --master-netmask="$PREFIXLEN" \
		--nic-parameters="mode=bridged,link=$BRIDGE" \
		--ipolicy-bounds-specs="min:cpu-count=1,disk-count=0,disk-size=1,memory-size=32,nic-count=0,spindle-use=1/max:cpu-count=32,disk-count=16,disk-size=1048576,memory-size=32768,nic-count=8,spindle-use=12" \
		--no-etc-hosts --no-ssh-init \
		"$CLUSTER" >&2 || fail "gnt-cluster init failed"
}

start_daemons() {
	local d
	stop_stale_daemons
	say "starting the Ganeti daemons inside the namespace"
	# check-and-start per daemon: `start-all` fails when one of them already runs
	for d in $("$DAEMON_UTIL" list-start-daemons); do
		in_sandbox "$DAEMON_UTIL" check-and-start "$d" >&2 || fail "daemon-util check-and-start $d failed"
	done
}

# ---------------------------------------------------------------- RAPI forwarder (optional)

start_forwarder() {
	[ -n "$RAPI_FORWARD_PORT" ] || return 0
	alive "$(cat "$STATE_DIR/forwarder.pid" 2>/dev/null)" && return 0
	# one connection: this process's stdio <-> the sandbox's 127.0.0.1:5080
	cat >"$STATE_DIR/rapi-connect" <<EOF
#!/bin/sh
exec nsenter --target "\$(cat "$STATE_DIR/holder.pid")" --net socat STDIO TCP4:127.0.0.1:5080
EOF
	chmod 700 "$STATE_DIR/rapi-connect"
	spawn_detached "$STATE_DIR/forwarder.pid" "$STATE_DIR/forwarder.log" \
		socat "TCP4-LISTEN:$RAPI_FORWARD_PORT,bind=127.0.0.1,reuseaddr,fork" "EXEC:$STATE_DIR/rapi-connect"
	sleep 0.2
	alive "$(cat "$STATE_DIR/forwarder.pid" 2>/dev/null)" ||
		fail "the RAPI forwarder did not start: $(cat "$STATE_DIR/forwarder.log")"
	say "RAPI forwarder: host 127.0.0.1:$RAPI_FORWARD_PORT -> sandbox 127.0.0.1:5080" \
		"(pid $(cat "$STATE_DIR/forwarder.pid"))"
}

# ---------------------------------------------------------------- commands

take_lock() {
	mkdir -p "$STATE_DIR"
	exec 9>"$STATE_DIR.lock"
	flock -w 300 9 || fail "another ganeti-sandbox.sh holds $STATE_DIR.lock"
}

cmd_up() {
	local t0=$SECONDS
	install_packages
	refuse_host_ganeti
	check_ownership
	start_namespace
	write_files
	if cluster_exists; then
		start_daemons
		wait_for_master
		ensure_master_ip
	else
		stop_stale_daemons
		init_cluster
		wait_for_master
	fi
	write_rapi_users
	start_forwarder
	wait_for_idle_queue
	say "up in $((SECONDS - t0))s: cluster $CLUSTER, master $NODE ($NODE_IP), bridge $BRIDGE"
}

cmd_down() {
	local t0=$SECONDS pid host hpid pids=() d
	pid=$(cat "$STATE_DIR/forwarder.pid" 2>/dev/null || true)
	if alive "$pid"; then stop_pids 5 "$pid"; fi
	rm -f "$STATE_DIR/forwarder.pid"
	host=$(netns_of $$)
	hpid=$(holder || true)
	# The Ganeti daemons (by their pid files; refuse_host_ganeti keeps a real Ganeti
	# out, this skips one anyway), then whatever else lives in their namespace: job
	# processes, hooks, OS scripts.
	for pid in $(ganeti_daemon_pids); do
		[ "$(netns_of "$pid")" = "$host" ] || pids+=("$pid")
	done
	stop_daemons_and_namespaces "$hpid" "${pids[@]}"
	if [ -n "$hpid" ]; then
		pids=()
		for d in $(pids_in_netns "$(netns_of "$hpid")"); do
			[ "$d" = "$hpid" ] || pids+=("$d")
		done
		[ ${#pids[@]} -eq 0 ] || stop_pids 10 "${pids[@]}"
		stop_pids 5 "$hpid"
		say "namespace holder $hpid stopped"
	fi
	rm -f "$STATE_DIR/holder.pid" "$STATE_DIR/ready"
	say "down in $((SECONDS - t0))s (cluster state kept in $GANETI_LIB)"
}

cmd_destroy() {
	refuse_host_ganeti
	check_ownership
	cmd_down
	rm -rf "${GANETI_LIB:?}"/* "${GANETI_RUN:?}"/* "${FILE_STORAGE:?}"/* "${SHARED_FILE_STORAGE:?}"/*
	rm -rf "$OS_DIR" "$HOOKS_DIR"
	if [ -e "$STORAGE_PATHS" ] && head -1 "$STORAGE_PATHS" | grep -q 'ganeti-sandbox'; then
		rm -f "$STORAGE_PATHS"
	fi
	rm -f "$MARKER"
	rm -rf "$STATE_DIR"
	say "destroyed: the next 'up' initialises a new cluster"
}

cmd_status() {
	local pid rc=0 f
	if pid=$(holder); then echo "namespace holder: pid $pid"; else
		echo "namespace holder: not running"
		rc=1
	fi
	if cluster_exists; then
		echo "cluster: $(cat "$GANETI_LIB/ssconf_cluster_name" 2>/dev/null), master $(cat "$GANETI_LIB/ssconf_master_node" 2>/dev/null)"
	else
		echo "cluster: not initialised"
		rc=1
	fi
	for f in "$GANETI_RUN"/ganeti-*.pid; do
		[ -e "$f" ] || continue
		pid=$(cat "$f" 2>/dev/null || true)
		echo "$(basename "$f" .pid): pid $pid $(alive "$pid" && echo running || echo gone)"
	done
	pid=$(cat "$STATE_DIR/forwarder.pid" 2>/dev/null || true)
	if alive "$pid"; then echo "RAPI forwarder: pid $pid"; fi
	if [ $rc = 0 ]; then
		in_sandbox gnt-cluster getmaster >/dev/null 2>&1 || {
			echo "master daemons: not answering"
			rc=1
		}
		[ $rc = 0 ] && in_sandbox gnt-instance list
	fi
	return $rc
}

[ "$(id -u)" = 0 ] || fail "must run as root (it creates namespaces and owns /var/lib/ganeti)"
case "${1:-}" in
up)
	take_lock
	cmd_up
	;;
down)
	take_lock
	cmd_down
	;;
destroy)
	take_lock
	cmd_destroy
	;;
status) cmd_status ;;
exec)
	shift
	[ $# -gt 0 ] || fail "usage: $0 exec CMD [ARG...]"
	in_sandbox "$@"
	;;
*)
	sed -n '2,14p' "$0" >&2
	exit 2
	;;
esac

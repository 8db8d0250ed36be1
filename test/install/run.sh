#!/usr/bin/env bash
# Install suite: the Debian package as a sysadmin installs it, and the service
# as systemd runs it, twice:
#
# A. On this machine (no systemd running), the service run by hand exactly as
#    the unit would run it:
#    1. make deb; dpkg -i (a previous install is purged first, and its system
#       user deleted, so the postinst's user creation runs each time);
#    2. what the package installed: static binary, version, unit, sysusers.d
#       file, user, conffile root:oauthbridge 0640, credentials dir 0700, man page;
#    3. the packaged default config.hcl passes `oauthbridge check` as the
#       service user and `serve` starts with it;
#    4. a config the service user cannot read (the old README's root:root 0640)
#       stops serve with exit 2 (no restart loop) and a message naming the fix;
#    5. the admin's setup against the fake Microsoft 365 (test/peers/fakeidp):
#       secrets in /etc/oauthbridge/credentials, the unit's LoadCredential= lines
#       uncommented in a drop-in, TLS certificate and key passed as credentials;
#       the service started from the installed unit file (User=, Group=, UMask=,
#       StateDirectory=, StateDirectoryMode=, LoadCredential=, ExecStart= are
#       read from it, not repeated here); `oauthbridge login` from a root shell
#       through the running daemon; IMAP (plain, STARTTLS, implicit TLS), POP3
#       and SMTP logins from 127.0.0.1; `status` and `check` from a root shell;
#       SIGHUP reload; SIGTERM drain;
#    6. dpkg -r keeps the configuration, dpkg --purge removes everything but
#       the system user.
#    "As the unit would": setpriv drops to the unit's user and group with no
#    supplementary groups, no capabilities and no_new_privs, under the unit's
#    umask and a clean environment holding STATE_DIRECTORY,
#    CREDENTIALS_DIRECTORY (/run/credentials/oauthbridge.service: copies of the
#    LoadCredential= sources, 0400 and owned by the service user in a 0500
#    directory, as systemd lays them out) and CONFIGURATION_DIRECTORY;
#    NOTIFY_SOCKET points at a datagram socket and READY=1 is awaited as
#    Type=notify does.
#
# B. Under a real systemd booted as PID 1 in a container (systemd-nspawn --boot
#    on a Debian 12 rootfs from debootstrap, cached in /var/cache/oauthbridge-test;
#    --volatile=overlay so every run starts from the pristine rootfs; a private
#    network), test/install/in-container.sh: dpkg -i lets the postinst start the
#    unit with every sandboxing directive in force (ProtectSystem=, PrivateUsers=,
#    SystemCallFilter=, ...), then the same admin setup and client checks driven
#    with systemctl, the unreadable config's exit 2 without restart, reload,
#    stop, remove, purge. INSTALL_NSPAWN=0 skips B.
#
# Usage: test/install/run.sh   (as root: it installs a package and Debian tools)
# Env:   INSTALL_DEB=path uses a prebuilt .deb; INSTALL_KEEP=1 keeps the temp dir.
# Output: "PASS name" / "FAIL name: why" lines, then "N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
START=$(date +%s)
# Where systemd puts the service's credentials ($CREDENTIALS_DIRECTORY).
CRED_RUN=/run/credentials/oauthbridge.service
DOMAIN=contoso.test
PACKAGES="curl openssl util-linux passwd python3 ca-certificates"
NSPAWN_PACKAGES="systemd-container debootstrap"
# The package list is part of the cache's name: a rootfs cached by an older
# version of this script (without a package now needed) is not reused.
ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,procps,curl,openssl,ca-certificates,sudo
ROOTFS=/var/cache/oauthbridge-test/bookworm-$(printf %s "$ROOTFS_PACKAGES" | md5sum | cut -c1-8)

log() { echo "install: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
	log "needs root (dpkg -i, a system user, setpriv)"
	exit 2
fi

T=$(mktemp -d /tmp/oauthbridge-install.XXXXXX)
RESULTS="$T/results"
: >"$RESULTS"
IDP_PID= SVC_PID= NOTIFY_PID= NSPAWN_PID=
SUMMARY_DONE=0

FAKEIDP=$T/fakeidp
# shellcheck source=lib.sh
. "$HERE/lib.sh"

stop_pid() {
	local pid=$1
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
}

purge_all() {
	if dpkg-query -W -f='${Status}' oauthbridge 2>/dev/null | grep 'install ok\|config-files\|half' >/dev/null; then
		dpkg --purge oauthbridge >>"$T/dpkg.log" 2>&1 || true
	fi
	rm -rf "$DROPIN_DIR"
	# The package keeps its user on purge (Debian policy); delete it here so
	# that every run exercises the postinst's user creation.
	if getent passwd oauthbridge >/dev/null; then userdel oauthbridge >>"$T/dpkg.log" 2>&1 || true; fi
	if getent group oauthbridge >/dev/null; then groupdel oauthbridge >>"$T/dpkg.log" 2>&1 || true; fi
}

cleanup() {
	local rc=$?
	set +e
	stop_pid "$SVC_PID"
	stop_pid "$NOTIFY_PID"
	stop_pid "$IDP_PID"
	stop_pid "$NSPAWN_PID"
	if [ "$SUMMARY_DONE" = 0 ]; then
		echo "FAIL suite setup: stopped early (exit $rc); see $T" | tee -a "$RESULTS"
		echo "$(grep -c '^PASS ' "$RESULTS") passed, $(grep -c '^FAIL ' "$RESULTS") failed"
		[ "$rc" != 0 ] || rc=1
	fi
	purge_all
	rm -rf "$CRED_RUN"
	if [ "${INSTALL_KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
		log "logs kept in $T"
	else
		rm -rf "$T"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools ----
missing=
for c in curl openssl setpriv useradd python3 update-ca-certificates; do command -v "$c" >/dev/null || missing=1; done
if [ -n "$missing" ]; then
	log "installing Debian packages: $PACKAGES"
	# shellcheck disable=SC2086
	{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES; } >"$T/apt.log" 2>&1 || {
		tail -20 "$T/apt.log" >&2
		exit 2
	}
fi

# ---- build ----
if [ -n "${INSTALL_DEB:-}" ]; then
	DEB=$INSTALL_DEB
else
	log "make deb"
	make -C "$ROOT" --no-print-directory deb >"$T/build.log" 2>&1 || {
		tail -20 "$T/build.log" >&2
		exit 1
	}
	DEB=$(ls "$ROOT"/build/oauthbridge_*.deb)
fi
# Static: it also runs inside the container.
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$T/fakeidp" ./test/peers/fakeidp)
DEBVER=$(dpkg-deb -f "$DEB" Version)
log "package $(basename "$DEB")"

# ---- 1. install ----
purge_all
if out=$(dpkg -i "$DEB" 2>&1); then pass "dpkg -i"; else fail "dpkg -i" "$out"; exit 1; fi
echo "$out" >>"$T/dpkg.log"

# ---- 2. what the package installed ----
if ! grep -q buildVersion "$ROOT/internal/cli/"*.go; then
	log "version stamp not checked: internal/cli has no buildVersion yet"
	DEBVER=
fi
check_installed

# ---- the unit, read from the installed files ----
# unit_files: the unit, then its drop-ins in order, as systemd reads them.
unit_files() {
	echo "$UNIT"
	if [ -d "$DROPIN_DIR" ]; then ls "$DROPIN_DIR"/*.conf 2>/dev/null | sort; fi
}
# unit_get KEY: the last assignment of KEY (one value per key in [Service]).
unit_get() {
	# shellcheck disable=SC2046
	sed -n "s/^$1=//p" $(unit_files) | tail -1
}
# unit_creds: ID:PATH of every active LoadCredential= line.
unit_creds() {
	# shellcheck disable=SC2046
	sed -n 's/^LoadCredential=//p' $(unit_files)
}

# start_service LOGFILE: lay out what systemd lays out for the unit, then run
# its ExecStart as its user; sets SVC_PID. Returns 1 (and says why) where
# systemd would refuse to start it (a LoadCredential= source missing).
start_service() {
	local logf=$1 user group umask sdir smode exec cred id src
	user=$(unit_get User) group=$(unit_get Group) umask=$(unit_get UMask)
	sdir=$(unit_get StateDirectory) smode=$(unit_get StateDirectoryMode)
	exec=$(unit_get ExecStart)
	[ -n "$user" ] && [ -n "$group" ] && [ -n "$umask" ] && [ -n "$sdir" ] && [ -n "$exec" ] || {
		echo "unit lacks User/Group/UMask/StateDirectory/ExecStart" >"$logf"
		return 1
	}
	# StateDirectory=: created, owned by the service user, StateDirectoryMode=.
	install -d -o "$user" -g "$group" -m "${smode:-0755}" "/var/lib/$sdir"
	chown -R "$user:$group" "/var/lib/$sdir"
	# LoadCredential=: copies, readable by the service user only.
	cred=$CRED_RUN
	rm -rf "$cred"
	install -d -m 0755 /run/credentials
	install -d -m 0700 "$cred"
	while IFS=: read -r id src; do
		[ -n "$id" ] || continue
		if [ ! -f "$src" ]; then
			echo "LoadCredential=$id:$src: no such file (systemd would fail the start with status 243/CREDENTIALS)" >"$logf"
			return 1
		fi
		install -o "$user" -g "$group" -m 0400 "$src" "$cred/$id"
	done < <(unit_creds)
	chown "$user:$group" "$cred"
	chmod 0500 "$cred"
	chmod 0755 "$T"
	# Type=notify: a socket for READY=1.
	rm -f "$T/notify.sock" "$T/notify.log"
	python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777)
with open(sys.argv[2], "a", buffering=1) as f:
    while True:
        f.write(s.recv(4096).decode() + "\n")
' "$T/notify.sock" "$T/notify.log" &
	NOTIFY_PID=$!
	for _ in $(seq 50); do [ -S "$T/notify.sock" ] && break; sleep 0.1; done
	# ExecStart= split into words as systemd does for a line without quotes.
	read -r -a argv <<<"$exec"
	env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
		STATE_DIRECTORY="/var/lib/$sdir" CREDENTIALS_DIRECTORY="$cred" CONFIGURATION_DIRECTORY=/etc/oauthbridge \
		NOTIFY_SOCKET="$T/notify.sock" \
		setpriv --reuid="$user" --regid="$group" --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- \
		/bin/sh -c 'umask "$0"; cd /; exec "$@"' "$umask" "${argv[@]}" </dev/null >"$logf" 2>&1 &
	SVC_PID=$!
}

# wait_ready: until READY=1 arrives or the service exits (bounded).
wait_ready() {
	for _ in $(seq 300); do
		grep -q '^READY=1' "$T/notify.log" 2>/dev/null && return 0
		kill -0 "$SVC_PID" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# stop_service: SIGTERM (KillMode=mixed: the main process), wait; sets
# STOP_RC to the exit status.
stop_service() {
	STOP_RC=0
	kill -TERM "$SVC_PID" 2>/dev/null || true
	wait "$SVC_PID" 2>/dev/null || STOP_RC=$?
	SVC_PID=
	stop_pid "$NOTIFY_PID"
	NOTIFY_PID=
}

as_service_user() {
	setpriv --reuid=oauthbridge --regid=oauthbridge --clear-groups --no-new-privs -- "$@"
}

# ---- 3. the packaged default configuration ----
expect "packaged config.hcl passes check as the service user" as_service_user /usr/bin/oauthbridge check -config "$CONF"
if start_service "$T/default.log" && wait_ready; then
	pass "serve starts with the packaged config.hcl (READY=1)"
	stop_service
	if [ "$STOP_RC" = 0 ]; then pass "SIGTERM: exit 0"; else fail "SIGTERM: exit 0" "exit $STOP_RC: $(tail -3 "$T/default.log")"; fi
else
	fail "serve starts with the packaged config.hcl" "$(tail -5 "$T/default.log")"
	[ -z "$SVC_PID" ] || stop_service
fi

# ---- 4. a config the service user cannot read ----
chown root:root "$CONF"
if start_service "$T/unreadable.log"; then
	rc=0
	wait "$SVC_PID" 2>/dev/null || rc=$?
	SVC_PID=
	stop_pid "$NOTIFY_PID"
	NOTIFY_PID=
	if [ "$rc" = 2 ] && grep -q "chown root:oauthbridge $CONF" "$T/unreadable.log"; then
		pass "unreadable config: exit 2 (RestartPreventExitStatus) naming the fix"
	else
		fail "unreadable config: exit 2 naming the fix" "exit $rc: $(cat "$T/unreadable.log")"
	fi
	expect "unit keeps exit 2 from restarting" grep -q '^RestartPreventExitStatus=2$' "$UNIT"
else
	fail "unreadable config" "$(cat "$T/unreadable.log")"
fi
chown root:oauthbridge "$CONF"

# ---- 5. the admin's setup against the fake Microsoft 365 ----
# A fresh state directory: the default run above created state_dir/key.
rm -rf /var/lib/oauthbridge
read -r P_IMAP P_IMAPS P_POP3 P_SMTP P_ADMIN < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
svc_log() { cat "$T/serve.log"; }
setup_admin

if ! start_service "$T/serve.log" || ! wait_ready; then
	fail "serve starts as the unit would" "$(tail -5 "$T/serve.log")"
	exit 1
fi
pass "serve starts as the unit would (READY=1)"
expect "daemon runs as oauthbridge" sh -c "[ \"\$(ps -o user= -p $SVC_PID)\" = oauthbridge ]"

login_and_clients

# ExecReload= (kill -HUP): the config is read again as the service user, sessions keep running.
: >"$T/notify.log"
kill -HUP "$SVC_PID"
for _ in $(seq 100); do grep -q '^READY=1' "$T/notify.log" && break; sleep 0.1; done
if grep -q '^READY=1' "$T/notify.log" && kill -0 "$SVC_PID"; then pass "SIGHUP reload (RELOADING=1, READY=1)"; else fail "SIGHUP reload" "$(tail -5 "$T/serve.log")"; fi
expect "IMAP after reload" sh -c "curl -sS --max-time 20 -u 'legacy:$USER_PW' imap://127.0.0.1:$P_IMAP/ | grep -q INBOX"

stop_service
if [ "$STOP_RC" = 0 ]; then pass "SIGTERM: drained, exit 0"; else fail "SIGTERM: exit 0" "exit $STOP_RC: $(tail -3 "$T/serve.log")"; fi
stop_pid "$IDP_PID"
IDP_PID=

# ---- 6. remove and purge ----
expect "dpkg -r" dpkg -r oauthbridge
expect "removed: binary gone, config and token store kept" sh -c "[ ! -e /usr/bin/oauthbridge ] && [ -f $CONF ] && [ -f /var/lib/oauthbridge/tokens.enc ]"
rm -rf "$DROPIN_DIR" "$FAKE_CA"
expect "dpkg --purge" dpkg --purge oauthbridge
expect "purged: /etc/oauthbridge, the token store and the stat override gone" sh -c "[ ! -e /etc/oauthbridge ] && [ ! -e /var/lib/oauthbridge ] && ! dpkg-statoverride --list $CONF"
expect "purged: the system user stays (Debian policy)" getent passwd oauthbridge

# ---- B. a real systemd as PID 1 in a container ----
# build_rootfs: a minimal Debian 12 with systemd, made once per machine.
build_rootfs() {
	local mirror
	[ -e "$ROOTFS/.complete" ] && return 0
	mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1 || true)
	mirror=${mirror:-http://deb.debian.org/debian}
	log "debootstrap bookworm from $mirror into $ROOTFS (once per machine)"
	rm -rf "$ROOTFS.tmp"
	mkdir -p "$(dirname "$ROOTFS")"
	debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" \
		bookworm "$ROOTFS.tmp" "$mirror" >"$T/debootstrap.log" 2>&1 || {
		tail -20 "$T/debootstrap.log" >&2
		return 1
	}
	touch "$ROOTFS.tmp/.complete"
	rm -rf "$ROOTFS"
	mv "$ROOTFS.tmp" "$ROOTFS"
}

nspawn_stage() {
	local leader= state in=$T/in
	if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
		log "installing Debian packages: $NSPAWN_PACKAGES"
		# shellcheck disable=SC2086
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $NSPAWN_PACKAGES; } >"$T/apt-nspawn.log" 2>&1 || {
			fail "systemd: install $NSPAWN_PACKAGES" "$(tail -5 "$T/apt-nspawn.log")"
			return
		}
	fi
	if ! build_rootfs; then
		fail "systemd: debootstrap" "$(tail -5 "$T/debootstrap.log")"
		return
	fi
	install -d -m 0755 "$in"
	cp "$DEB" "$in/oauthbridge.deb"
	cp "$T/fakeidp" "$HERE/lib.sh" "$HERE/in-container.sh" "$in/"
	# --volatile=overlay: / is the cached rootfs under a tmpfs overlay, so
	# nothing this run does reaches the cache. --keep-unit/--register=no: this
	# machine has no systemd to register with.
	systemd-nspawn -q -D "$ROOTFS" --volatile=overlay --private-network --register=no --keep-unit \
		--bind-ro="$in:/mnt/in" --boot --console=pipe </dev/null >"$T/nspawn.log" 2>&1 &
	NSPAWN_PID=$!
	for _ in $(seq 300); do
		# ps exits 1 while nspawn has no child yet: with pipefail and set -e
		# that must not end the script.
		leader=$(ps --ppid "$NSPAWN_PID" -o pid=,comm= 2>/dev/null | awk '$2 == "systemd" { print $1; exit }' || true)
		[ -n "$leader" ] && break
		kill -0 "$NSPAWN_PID" 2>/dev/null || break
		sleep 0.1
	done
	if [ -z "$leader" ]; then
		fail "systemd: boot the container" "$(tail -5 "$T/nspawn.log")"
		return
	fi
	# Until PID 1 listens on its private socket, systemctl cannot connect.
	for _ in $(seq 300); do
		nsenter -t "$leader" -a -- test -S /run/systemd/private 2>/dev/null && break
		sleep 0.1
	done
	state=$(timeout 120 nsenter -t "$leader" -a -- systemctl is-system-running --wait 2>&1 || true)
	if [ "$state" = running ] || [ "$state" = degraded ]; then
		pass "systemd: systemd booted as PID 1 in the container ($state)"
	else
		fail "systemd: boot to multi-user.target" "$state $(nsenter -t "$leader" -a -- systemctl --failed --no-pager 2>&1)"
		return
	fi
	nsenter -t "$leader" -a -- env DEBVER="$DEBVER" bash /mnt/in/in-container.sh 2>"$T/in-container.stderr" |
		sed -u 's/^\(PASS\|FAIL\) /\1 systemd: /' | tee -a "$RESULTS" || true
	grep -q '^PASS systemd: dpkg --purge' "$RESULTS" || fail "systemd: in-container.sh ran to the end" "$(tail -5 "$T/in-container.stderr")"
	stop_pid "$NSPAWN_PID"
	NSPAWN_PID=
}

if [ "${INSTALL_NSPAWN:-1}" = 0 ]; then
	log "INSTALL_NSPAWN=0: the real-systemd stage is skipped"
else
	nspawn_stage
fi

SUMMARY_DONE=1
log "took $(($(date +%s) - START))s"
np=$(grep -c '^PASS ' "$RESULTS" || true)
nf=$(grep -c '^FAIL ' "$RESULTS" || true)
echo "$np passed, $nf failed"
[ "$nf" = 0 ]

#!/usr/bin/env bash
# Install suite: the Debian package as a sysadmin installs it, and the service
# as systemd would run it.
#
#   1. make deb; dpkg -i the package (a previous install is purged first, and
#      its system user deleted, so the postinst's user creation runs each time);
#   2. what the package installed: static binary, version, unit, sysusers.d
#      file, user, conffile root:oauthbridge 0640, credentials dir 0700, man page;
#   3. the packaged default config.hcl passes `oauthbridge check` as the service
#      user and `serve` starts with it;
#   4. a config the service user cannot read (the old README's root:root 0640)
#      stops serve with exit 2 (no restart loop) and a message naming the fix;
#   5. the admin's setup against the fake Microsoft 365 (test/peers/fakeidp):
#      secrets in /etc/oauthbridge/credentials, the unit's LoadCredential= lines
#      uncommented in a drop-in, TLS certificate and key passed as credentials;
#      the service started from the installed unit file (User=, Group=, UMask=,
#      StateDirectory=, StateDirectoryMode=, LoadCredential=, ExecStart= are read
#      from it, not repeated here); `oauthbridge login` from a root shell through
#      the running daemon; IMAP (plain, STARTTLS, implicit TLS), POP3 and SMTP
#      logins from 127.0.0.1; `status` and `check` from a root shell; SIGHUP
#      reload; SIGTERM drain;
#   6. dpkg -r keeps the configuration, dpkg --purge removes everything but the
#      system user.
#
# "As systemd would": setpriv drops to the unit's user and group with no
# supplementary groups, no capabilities and no_new_privs, under the unit's
# umask and a clean environment holding STATE_DIRECTORY, CREDENTIALS_DIRECTORY
# (copies of the LoadCredential= sources, 0400 and owned by the service user in
# a 0500 directory, as systemd lays them out) and CONFIGURATION_DIRECTORY.
# NOTIFY_SOCKET points at a datagram socket here, and the suite waits for the
# daemon's READY=1 as Type=notify does. The sandboxing directives
# (ProtectSystem=, PrivateTmp=, SystemCallFilter=, ...) need a running systemd
# and are checked by systemd/check.sh instead; nothing the service reads lives
# under /tmp, which PrivateTmp=yes would hide.
#
# Usage: test/install/run.sh   (as root: it installs a package and Debian tools)
# Env:   INSTALL_DEB=path uses a prebuilt .deb; INSTALL_KEEP=1 keeps the temp dir.
# Output: "PASS name" / "FAIL name: why" lines, then "N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
START=$(date +%s)
UNIT=/lib/systemd/system/oauthbridge.service
DROPIN_DIR=/etc/systemd/system/oauthbridge.service.d
DROPIN=$DROPIN_DIR/credentials.conf
CREDS=/etc/oauthbridge/credentials
CONF=/etc/oauthbridge/config.hcl
FAKE_CA=/etc/oauthbridge/test-fake-ca.pem
# Where systemd puts the service's credentials ($CREDENTIALS_DIRECTORY).
CRED_RUN=/run/credentials/oauthbridge.service
DOMAIN=contoso.test
PACKAGES="curl openssl util-linux passwd python3 ca-certificates"

log() { echo "install: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
	log "needs root (dpkg -i, a system user, setpriv)"
	exit 2
fi

T=$(mktemp -d /tmp/oauthbridge-install.XXXXXX)
RESULTS="$T/results"
: >"$RESULTS"
IDP_PID= SVC_PID= NOTIFY_PID=
SUMMARY_DONE=0

pass() { echo "PASS $1" | tee -a "$RESULTS"; }
fail() { echo "FAIL $1: $(echo "$2" | tr -s '\n\t ' ' ' | cut -c1-500)" | tee -a "$RESULTS"; }
# expect NAME CMD...: PASS when CMD succeeds, else FAIL with its output.
expect() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

stop_pid() {
	local pid=$1
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
}

purge_all() {
	if dpkg-query -W -f='${Status}' oauthbridge 2>/dev/null | grep -q 'install ok\|config-files\|half'; then
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
(cd "$ROOT" && go build -o "$T/fakeidp" ./test/peers/fakeidp)
DEBVER=$(dpkg-deb -f "$DEB" Version)
log "package $(basename "$DEB")"

# ---- 1. install ----
purge_all
if out=$(dpkg -i "$DEB" 2>&1); then pass "dpkg -i"; else fail "dpkg -i" "$out"; exit 1; fi
echo "$out" >>"$T/dpkg.log"

# ---- 2. what the package installed ----
expect "binary is static" sh -c 'ldd /usr/bin/oauthbridge 2>&1 | grep -q "not a dynamic executable"'
if grep -q buildVersion "$ROOT/internal/cli/"*.go; then
	expect "version stamped ($DEBVER)" sh -c "/usr/bin/oauthbridge version | grep -F -- '$DEBVER'"
else
	log "version stamp not checked: internal/cli has no buildVersion yet"
fi
expect "unit installed" test -f "$UNIT"
expect "unit ExecStart names /usr/bin/oauthbridge" grep -q '^ExecStart=/usr/bin/oauthbridge ' "$UNIT"
expect "sysusers.d file" test -f /usr/lib/sysusers.d/oauthbridge.conf
expect "man page" test -f /usr/share/man/man8/oauthbridge.8.gz
expect "config.hcl is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' oauthbridge | grep -q ' $CONF '"
uid=$(id -u oauthbridge 2>/dev/null || echo none)
if [ "$uid" != none ] && [ "$uid" -lt 1000 ] && [ "$uid" -gt 0 ]; then pass "system user oauthbridge (uid $uid)"; else fail "system user oauthbridge" "uid=$uid"; fi
expect "service user has no login shell" sh -c 'getent passwd oauthbridge | grep -Eq ":/(usr/)?s?bin/(nologin|false)$"'
expect "config.hcl root:oauthbridge 0640" sh -c "[ \"\$(stat -c '%U:%G %a' $CONF)\" = 'root:oauthbridge 640' ]"
expect "credentials dir root 0700" sh -c "[ \"\$(stat -c '%U:%G %a' $CREDS)\" = 'root:root 700' ]"

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
CLIENT_SECRET="cs-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
ADMIN_PW="admin-$RANDOM$RANDOM"
USER_PW="pw-$RANDOM$RANDOM"
"$T/fakeidp" -listen 127.0.0.1:0 -url-file "$T/idp.url" -env-file "$T/fake.env" -log "$T/fakeidp.log" \
	-app "bridge-app:$CLIENT_SECRET" -user "alice@$DOMAIN" -user "bob@$DOMAIN" \
	-mailbox "alice@$DOMAIN" -mailbox "bob@$DOMAIN" -mailbox "helpdesk@$DOMAIN=alice@$DOMAIN" >>"$T/fakeidp.log" 2>&1 &
IDP_PID=$!
for _ in $(seq 100); do [ -s "$T/idp.url" ] && [ -s "$T/fake.env" ] && break; sleep 0.1; done
IDP_URL=$(cat "$T/idp.url")
# shellcheck disable=SC1091
. "$T/fake.env"
install -m 0644 "$FAKE_CA_FILE" "$FAKE_CA"

# Secrets, root-only, where the unit's LoadCredential= lines look.
umask 077
printf '%s\n' "$CLIENT_SECRET" >"$CREDS/client-secret"
printf '%s\n' "$ADMIN_PW" | /usr/bin/oauthbridge hash-password >"$CREDS/admin-password-hash"
head -c 32 /dev/urandom >"$CREDS/token-store-key"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bridge.test \
	-addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$CREDS/tls-key" -out "$CREDS/tls-cert" 2>"$T/openssl.log"
umask 022
cp "$CREDS/tls-cert" "$T/bridge-ca.pem"
USER_HASH=$(printf '%s\n' "$USER_PW" | /usr/bin/oauthbridge hash-password)
expect "credentials are root-only files" sh -c "[ -z \"\$(find $CREDS -type f ! -perm 0600)\" ] && [ -z \"\$(find $CREDS ! -user root)\" ]"

# The drop-in a sysadmin writes with `systemctl edit oauthbridge`: the unit's
# commented LoadCredential= lines, uncommented.
install -d -m 0755 "$DROPIN_DIR"
{ echo "[Service]"; sed -n 's/^#\(LoadCredential=[a-z-]*:\/etc\/oauthbridge\/credentials\/[a-z-]*\)$/\1/p' "$UNIT"; } >"$DROPIN"
n=$(unit_creds | wc -l)
if [ "$n" = 5 ]; then pass "unit names 5 credentials under $CREDS"; else fail "unit names 5 credentials" "$(cat "$DROPIN")"; fi

# The configuration, written over the conffile as an editor does (owner and mode stay).
cat >"$CONF" <<EOF
state_dir = "/var/lib/oauthbridge"
imap {
  listen     = ["127.0.0.1:$P_IMAP"]
  listen_tls = ["127.0.0.1:$P_IMAPS"]
}
pop3 {
  listen = ["127.0.0.1:$P_POP3"]
}
smtp {
  listen = ["127.0.0.1:$P_SMTP"]
  domain = "bridge.test"
}
tls {
  cert_file = credential_path("tls-cert")
  key_file  = credential_path("tls-key")
}
admin {
  listen        = "127.0.0.1:$P_ADMIN"
  public_url    = "http://127.0.0.1:$P_ADMIN"
  password_hash = credential("admin-password-hash")
}
provider "contoso" {
  tenant        = "$DOMAIN"
  client_id     = "bridge-app"
  client_secret = credential("client-secret")
  authority     = "$IDP_URL"
  imap_server   = "$FAKE_IMAP"
  pop3_server   = "$FAKE_POP3"
  smtp_server   = "$FAKE_SMTP"
  ca_file       = "$FAKE_CA"
}
account "helpdesk" {
  provider = "contoso"
  mailbox  = "helpdesk@$DOMAIN"
  delegate = "alice@$DOMAIN"
}
user "legacy" {
  password_hash = "$USER_HASH"
  account       = "helpdesk"
}
EOF
expect "config.hcl still root:oauthbridge 0640 after editing" sh -c "[ \"\$(stat -c '%U:%G %a' $CONF)\" = 'root:oauthbridge 640' ]"

# The admin's shell: root, the credentials the unit loads.
admin_cli() { env CREDENTIALS_DIRECTORY="$CREDS" OAUTHBRIDGE_ADMIN_PASSWORD="$ADMIN_PW" /usr/bin/oauthbridge "$@"; }
expect "check from a root shell (credentials from $CREDS)" admin_cli check
if /usr/bin/oauthbridge check -h 2>&1 | grep -q -- '-credentials'; then
	expect "check from a root shell without CREDENTIALS_DIRECTORY" env -u CREDENTIALS_DIRECTORY /usr/bin/oauthbridge check
fi

if ! start_service "$T/serve.log" || ! wait_ready; then
	fail "serve starts as the unit would" "$(tail -5 "$T/serve.log")"
	exit 1
fi
pass "serve starts as the unit would (READY=1)"
expect "daemon runs as oauthbridge" sh -c "[ \"\$(ps -o user= -p $SVC_PID)\" = oauthbridge ]"

# Sign in through the running daemon, from a root shell, approving the device code at the fake.
admin_cli login helpdesk >"$T/login.out" 2>&1 &
LOGIN_PID=$!
code=
for _ in $(seq 100); do
	code=$(awk '/enter the code/ { f = 1; next } f && NF { print $1; exit }' "$T/login.out")
	[ -n "$code" ] && break
	sleep 0.1
done
if [ -n "$code" ] && curl -sf -X POST --data-urlencode "code=$code" --data-urlencode "upn=alice@$DOMAIN" "$IDP_URL/test/approve" >/dev/null; then
	lrc=0
	wait "$LOGIN_PID" || lrc=$?
	if [ "$lrc" = 0 ]; then pass "login helpdesk through the daemon (device code)"; else fail "login helpdesk" "exit $lrc: $(cat "$T/login.out")"; fi
else
	kill "$LOGIN_PID" 2>/dev/null || true
	fail "login helpdesk: device code" "$(cat "$T/login.out")"
fi

# Legacy clients on 127.0.0.1.
expect "IMAP login + LIST" sh -c "curl -sS --max-time 20 -u 'legacy:$USER_PW' imap://127.0.0.1:$P_IMAP/ | grep -q INBOX"
expect "IMAP STARTTLS with the credential's certificate" sh -c "curl -sS --max-time 20 --ssl-reqd --cacert $T/bridge-ca.pem -u 'legacy:$USER_PW' imap://127.0.0.1:$P_IMAP/ | grep -q INBOX"
expect "IMAPS (implicit TLS) with the credential's key" sh -c "curl -sS --max-time 20 --cacert $T/bridge-ca.pem -u 'legacy:$USER_PW' imaps://127.0.0.1:$P_IMAPS/ | grep -q INBOX"
expect "IMAP wrong password refused" sh -c "! curl -sS --max-time 20 -u 'legacy:wrong' imap://127.0.0.1:$P_IMAP/"
expect "POP3 login + LIST" curl -sS --max-time 20 -u "legacy:$USER_PW" "pop3://127.0.0.1:$P_POP3/"
printf 'From: helpdesk@%s\r\nTo: bob@%s\r\nSubject: install test\r\n\r\nhello from the packaged bridge\r\n' "$DOMAIN" "$DOMAIN" >"$T/msg.eml"
expect "SMTP AUTH + send (250 only after upstream accepted)" curl -sS --max-time 20 -u "legacy:$USER_PW" \
	--mail-from "helpdesk@$DOMAIN" --mail-rcpt "bob@$DOMAIN" --upload-file "$T/msg.eml" "smtp://127.0.0.1:$P_SMTP"

# The admin's view from a root shell.
if out=$(admin_cli status -json 2>&1) && echo "$out" | tr -d ' \n' | grep -q '"account":"helpdesk".*"state":"ok"'; then
	pass "status from a root shell: helpdesk ok, exit 0"
else
	fail "status from a root shell" "$out"
fi
expect "check from a root shell beside the running service" admin_cli check
expect "token store owned by oauthbridge, 0600 (UMask=0077)" sh -c "[ \"\$(stat -c '%U %a' /var/lib/oauthbridge/tokens.enc)\" = 'oauthbridge 600' ]"
expect "store key from the token-store-key credential (no state_dir/key)" test ! -e /var/lib/oauthbridge/key
expect "no secret in the service log" sh -c "! grep -F -e '$CLIENT_SECRET' -e '$USER_PW' -e '$ADMIN_PW' $T/serve.log"

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

SUMMARY_DONE=1
log "took $(($(date +%s) - START))s"
np=$(grep -c '^PASS ' "$RESULTS" || true)
nf=$(grep -c '^FAIL ' "$RESULTS" || true)
echo "$np passed, $nf failed"
[ "$nf" = 0 ]

#!/usr/bin/env bash
# Runs inside the container that test/install/run.sh boots with a real
# systemd as PID 1 (systemd-nspawn --boot, private network): installs the
# package with dpkg, lets its postinst create the user and enable and start
# the unit, and drives the service with systemctl only.
#
# Usage (by run.sh): bash /mnt/in/in-container.sh   with /mnt/in holding
# oauthbridge.deb, fakeidp, lib.sh; env DEBVER (empty: no version check).
# Output: PASS/FAIL lines; exit 1 on any failure.
set -euo pipefail
export LANG=C.UTF-8
T=$(mktemp -d)
RESULTS=$T/results
: >"$RESULTS"
FAKEIDP=/mnt/in/fakeidp
IDP_PID=
# A private network namespace: fixed ports cannot collide with the host's.
P_IMAP=2143 P_IMAPS=2993 P_POP3=2110 P_SMTP=2587 P_ADMIN=2025
# shellcheck source=lib.sh
. /mnt/in/lib.sh
trap '[ -z "$IDP_PID" ] || kill "$IDP_PID" 2>/dev/null || true' EXIT

svc_log() { journalctl -u oauthbridge --no-pager -o cat; }
prop() { systemctl show -P "$1" oauthbridge; }

# 1. dpkg -i with systemd running: the postinst creates the user, enables and starts the unit.
if out=$(dpkg -i /mnt/in/oauthbridge.deb 2>&1); then pass "dpkg -i"; else fail "dpkg -i" "$out"; exit 1; fi
check_installed
expect "postinst enabled the unit" sh -c '[ "$(systemctl is-enabled oauthbridge)" = enabled ]'
if [ "$(systemctl is-active oauthbridge)" = active ] && [ "$(prop StatusText)" = serving ]; then
	pass "postinst started the service with the packaged config.hcl (READY=1, status serving)"
else
	fail "postinst started the service" "$(systemctl status oauthbridge --no-pager 2>&1 | tail -8)"
fi
expect "the service runs as oauthbridge" sh -c '[ "$(ps -o user= -p "$(systemctl show -P MainPID oauthbridge)")" = oauthbridge ]'

# 2. A config file the service user cannot read: exit 2, no restart loop, the fix in the journal.
chown root:root "$CONF"
systemctl restart oauthbridge 2>/dev/null || true
st=$(prop ActiveState) code=$(prop ExecMainStatus) n=$(prop NRestarts)
if [ "$st" = failed ] && [ "$code" = 2 ] && [ "$n" = 0 ]; then
	pass "unreadable config: exit 2, failed, not restarted"
else
	fail "unreadable config: exit 2, no restart" "ActiveState=$st ExecMainStatus=$code NRestarts=$n"
fi
expect "unreadable config: the journal names the fix" sh -c "journalctl -u oauthbridge --no-pager -o cat | grep -q 'chown root:oauthbridge $CONF'"
chown root:oauthbridge "$CONF"
systemctl reset-failed oauthbridge

# 3. The sysadmin's setup: credentials, drop-in, config; then a restart.
# From a fresh state directory: the start above created state_dir/key, and the
# store key must now come from the token-store-key credential.
systemctl stop oauthbridge
rm -rf /var/lib/oauthbridge
setup_admin
systemctl daemon-reload
if systemctl restart oauthbridge 2>"$T/restart.err" && [ "$(systemctl is-active oauthbridge)" = active ]; then
	pass "restart with LoadCredential= and TLS from credentials"
else
	fail "restart with credentials" "$(cat "$T/restart.err"; svc_log | tail -5)"
	exit 1
fi
login_and_clients

# 4. systemctl reload (SIGHUP): still active, still serving.
expect "systemctl reload" systemctl reload oauthbridge
expect "active after reload" sh -c '[ "$(systemctl is-active oauthbridge)" = active ]'
expect "IMAP after reload" sh -c "curl -sS --max-time 20 -u 'legacy:$USER_PW' imap://127.0.0.1:$P_IMAP/ | grep -q INBOX"

# README step 5, as printed: `sudoedit /etc/oauthbridge/config.hcl` keeps the
# file's owner and mode, and `journalctl -u oauthbridge -f` follows JSON lines.
printf '#!/bin/sh\necho "# edited with sudoedit" >>"$1"\n' >"$T/editor" && chmod 0755 "$T/editor"
expect "sudoedit /etc/oauthbridge/config.hcl" env SUDO_EDITOR="$T/editor" sudoedit /etc/oauthbridge/config.hcl
expect "sudoedit: the edit is there, still root:oauthbridge 0640" sh -c "grep -q 'edited with sudoedit' $CONF && [ \"\$(stat -c '%U:%G %a' $CONF)\" = 'root:oauthbridge 640' ]"
expect "oauthbridge check after sudoedit" oauthbridge check
systemctl reload oauthbridge
timeout 5 journalctl -u oauthbridge -f >"$T/follow" 2>&1 || true
expect "journalctl -u oauthbridge -f: JSON lines" grep -q 'oauthbridge.*{.*"msg":' "$T/follow"

# 5. systemctl stop: a clean drain.
systemctl stop oauthbridge
if [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ]; then pass "systemctl stop: exit 0"; else fail "systemctl stop" "Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"; fi
systemctl start oauthbridge

# 6. Remove (the prerm stops the service), then purge.
rm -rf "$DROPIN_DIR" "$FAKE_CA"
expect "dpkg -r" dpkg -r oauthbridge
expect "removed: service stopped, binary gone, config kept" sh -c "! systemctl is-active -q oauthbridge && [ ! -e /usr/bin/oauthbridge ] && [ -f $CONF ]"
expect "dpkg --purge" dpkg --purge oauthbridge
expect "purged: /etc/oauthbridge and the token store gone" sh -c "[ ! -e /etc/oauthbridge ] && [ ! -e /var/lib/oauthbridge ]"

! grep -q '^FAIL ' "$RESULTS"

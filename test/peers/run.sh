#!/usr/bin/env bash
# Real-peer suite: the bridge between real legacy clients (Python imaplib/
# poplib/smtplib, curl, PHP imap, Perl Mail::IMAPClient and Net::SMTP,
# fetchmail, getmail, swaks) and real upstream servers (Dovecot 2.3 and Postfix 3.7)
# that demand SASL XOAUTH2 with tokens from internal/fakems's identity
# platform (test/peers/fakeidp).
#
# Usage: test/peers/run.sh            (as root it installs missing Debian packages)
# Env:   PEERS_KEEP=1 keeps the temp dir (logs, configs) even when all pass.
#        PEERS_BIN=path uses a prebuilt oauthbridge binary.
# Output: one "PASS client scenario" / "FAIL client scenario: why" line per
# scenario, then "N passed, M failed"; exit status 1 on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
START=$(date +%s)
DOMAIN=contoso.test
# Access tokens live this long, so the bridge refreshes in the background
# throughout the run and a revoked refresh token shows up quickly.
TOKEN_LIFETIME=${PEERS_TOKEN_LIFETIME:-20s}
PACKAGES="dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix php-cli php8.2-imap libmail-imapclient-perl
libauthen-sasl-perl libio-socket-ssl-perl fetchmail getmail6 swaks curl openssl ca-certificates"

T=$(mktemp -d /tmp/oauthbridge-peers.XXXXXX)
chmod 0755 "$T" # Postfix (as postfix) and Dovecot's login processes reach sockets under it
export T DOMAIN
RESULTS="$T/results"
: >"$RESULTS"

IDP_PID= DOVECOT_PID= POSTFIX_PID= BRIDGE_PID=
# shellcheck source=upstream.sh
. "$HERE/upstream.sh"

SUMMARY_DONE=0
cleanup() {
	local rc=$?
	set +e
	if [ "$SUMMARY_DONE" = 0 ]; then
		# The run stopped early (setup failed): still end with the summary line.
		echo "FAIL suite setup: stopped early (exit $rc); see $T" | tee -a "$RESULTS"
		echo "$(grep -c '^PASS ' "$RESULTS") passed, $(grep -c '^FAIL ' "$RESULTS") failed"
		[ "$rc" != 0 ] || rc=1
	fi
	stop_pid "$BRIDGE_PID"
	stop_postfix
	stop_dovecot
	stop_pid "$IDP_PID"
	if [ "${PEERS_KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
		peers_log "logs and configs kept in $T"
	else
		rm -rf "$T"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS $1 $2" | tee -a "$RESULTS"; }
fail() { echo "FAIL $1 $2: $(echo "$3" | tr -s '\n\t ' ' ' | cut -c1-400)" | tee -a "$RESULTS"; }
# record: run a command whose stdout is PASS/FAIL lines; keep them. A
# script that dies is a failure of its own (its later scenarios are missing).
record() {
	local rc
	"$@" 2>>"$T/clients.stderr" | tee -a "$RESULTS" && rc=0 || rc=${PIPESTATUS[0]}
	[ "$rc" = 0 ] || fail "$(basename "$2")" script-exit "$* exited $rc: $(tail -3 "$T/clients.stderr")"
}

# ---- packages ----
need_packages() {
	local missing=0
	for c in dovecot postfix php swaks fetchmail getmail curl openssl; do
		command -v "$c" >/dev/null || missing=1
	done
	[ -x /usr/lib/postfix/sbin/master ] || missing=1
	[ -e /usr/lib/dovecot/lmtp ] || missing=1
	[ -e /usr/lib/dovecot/pop3 ] || missing=1
	php -m 2>/dev/null | grep -qx imap || missing=1
	perl -MMail::IMAPClient -MAuthen::SASL -MIO::Socket::SSL -e1 2>/dev/null || missing=1
	return $((1 - missing))
}
if need_packages; then
	if [ "$(id -u)" != 0 ]; then
		peers_log "missing Debian packages and not root: apt-get install" $PACKAGES
		exit 2
	fi
	peers_log "installing Debian packages"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2086
	{ apt-get update -q && apt-get install -y -q --no-install-recommends $PACKAGES; } >"$T/apt.log" 2>&1 || {
		tail -20 "$T/apt.log" >&2
		exit 2
	}
fi
if [ "$(id -u)" != 0 ]; then
	peers_log "the suite runs Dovecot and Postfix, which need root"
	exit 2
fi

# ---- build ----
peers_log "building in $T"
BIN=${PEERS_BIN:-$T/oauthbridge}
(cd "$ROOT" && { [ -n "${PEERS_BIN:-}" ] || go build -o "$BIN" ./cmd/oauthbridge; } && go build -o "$T/fakeidp" ./test/peers/fakeidp)

# ---- ports ----
read -r IMAPS_PORT POP3S_PORT SUBMIT_PORT B_IMAP B_POP3 B_SMTP B_ADMIN B_IMAPS B_POP3S B_SMTPS < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(10)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
export IMAPS_PORT POP3S_PORT SUBMIT_PORT B_IMAP B_POP3 B_SMTP B_ADMIN B_IMAPS B_POP3S B_SMTPS
export CA_FILE="$T/ca/ca.pem" LMTP_SOCKET="$T/dovecot/run/lmtp" PEERS_DIR="$HERE"

# Mailboxes: shared ones have a delegate (alice) who signs in for them.
# name:mailbox-localpart:delegate-localpart(or -):send_as localparts (comma)
ACCOUNTS="helpdesk:helpdesk:alice:support,ceo pop:pop:-: curl:curl:-: php:php:alice: perl:perl:alice: fm:fm:-: gm:gm:-: swaks:swaks:-:swaks-alias rv:rv:-:"
# Local users: user=account (passwords pw-<user>)
# otrs and cron share the helpdesk mailbox (the stale-client scenario).
USERS="py=helpdesk pop=pop curl=curl php=php perl=perl fm=fm swaks=swaks rv=rv appuser=app otrs=helpdesk cron=helpdesk gpop=graphpop gr=gr grfm=grfm grpl=grpl grph=grph gm=gm grgp=grgp grgi=grgi"
# One more account uses the app flow (client credentials) through a
# confidential client of its own; Dovecot lets the app's token open it.
APP_ID=bridge-daemon
export PEERS_APP_SECRET="secret-$RANDOM$RANDOM"
export PW_special='Sp"e\ci{5}al %x 1'"'"'2'
MAILBOXES="alice@$DOMAIN bob@$DOMAIN app@$DOMAIN"
ALIASES="support@$DOMAIN=helpdesk@$DOMAIN swaks-alias@$DOMAIN=swaks@$DOMAIN"
idp_args=(-app bridge-app -app "$APP_ID:$PEERS_APP_SECRET" -grant-app "$APP_ID=app@$DOMAIN" -mailbox "app@$DOMAIN" -user "alice@$DOMAIN" -user "bob@$DOMAIN" -mailbox "alice@$DOMAIN" -mailbox "bob@$DOMAIN")
# One account is read through the fake's Microsoft Graph (read_via = "graph",
# graph.sh): its mailbox lives in the fake's store, not in Dovecot.
idp_args+=(-user "graphpop@$DOMAIN" -mailbox "graphpop@$DOMAIN" -graph-url-file "$T/graph.url" -ca-file "$T/graph-ca.pem")
for a in $ACCOUNTS; do
	IFS=: read -r name local deleg _ <<<"$a"
	MAILBOXES="$MAILBOXES $local@$DOMAIN"
	if [ "$deleg" = - ]; then
		idp_args+=(-user "$local@$DOMAIN" -mailbox "$local@$DOMAIN")
	else
		idp_args+=(-mailbox "$local@$DOMAIN=$deleg@$DOMAIN")
	fi
done
export MAILBOXES ALIASES
# One account reads and sends through the fake's Microsoft Graph endpoint
# (read_via = "graph", send_via = "graph"): its mailbox lives in the fake
# Microsoft 365 only, not in Dovecot.
# gr: Python imaplib; grfm: fetchmail; grpl: Perl Mail::IMAPClient; grph: PHP imap;
# grgp, grgi: getmail POP3, IMAP (getmail.sh).
GRAPH_ACCOUNTS="gr grfm grpl grph grgp grgi"
for g in $GRAPH_ACCOUNTS; do idp_args+=(-user "$g@$DOMAIN" -mailbox "$g@$DOMAIN"); done

# ---- fake identity platform ----
"$T/fakeidp" -listen 127.0.0.1:0 -url-file "$T/idp.url" -log "$T/fakeidp.log" -token-lifetime "$TOKEN_LIFETIME" \
	"${idp_args[@]}" >>"$T/fakeidp.log" 2>&1 &
IDP_PID=$!
for _ in $(seq 100); do [ -s "$T/idp.url" ] && break; sleep 0.1; done
IDP_URL=$(cat "$T/idp.url")
for _ in $(seq 100); do [ -s "$T/graph.url" ] && break; sleep 0.1; done
GRAPH_URL=$(cat "$T/graph.url")
export IDP_URL GRAPH_URL
peers_log "fakeidp at $IDP_URL"

# ---- upstream servers ----
gen_ca
write_dovecot
write_postfix
start_dovecot
start_postfix
peers_log "dovecot imaps :$IMAPS_PORT pop3s :$POP3S_PORT, postfix submission :$SUBMIT_PORT"
record python3 "$HERE/clients.py" upstream

# ---- the bridge ----
mkdir -p "$T/bridge/state"
{
	cat <<-EOF
		state_dir  = "$T/bridge/state"
		log_format = "json"
		log_level  = "debug"
		shutdown_timeout = "2s"
		# Plaintext listeners offer STARTTLS (the tls block is set); the
		# listen_tls ones are implicit TLS. The certificate is the test CA's.
		tls {
		  cert_file = "$T/ca/server.pem"
		  key_file  = "$T/ca/server.key"
		}
		imap {
		  listen     = ["127.0.0.1:$B_IMAP"]
		  listen_tls = ["127.0.0.1:$B_IMAPS"]
		  upstream_timeout = "15s"
		  graph_poll_interval = "1s" # IDLE on Graph-served accounts wakes within the clients' 15 s
		}
		pop3 {
		  listen     = ["127.0.0.1:$B_POP3"]
		  listen_tls = ["127.0.0.1:$B_POP3S"]
		  upstream_timeout = "15s"
		}
		smtp {
		  listen     = ["127.0.0.1:$B_SMTP"]
		  listen_tls = ["127.0.0.1:$B_SMTPS"]
		  domain = "bridge.$DOMAIN"
		  upstream_timeout = "15s"
		}
		admin {
		  listen     = "127.0.0.1:$B_ADMIN"
		  public_url = "http://127.0.0.1:$B_ADMIN"
		}
		provider "fake" {
		  tenant      = "$DOMAIN"
		  client_id   = "bridge-app"
		  authority   = "$IDP_URL"
		  imap_server = "127.0.0.1:$IMAPS_PORT"
		  pop3_server = "127.0.0.1:$POP3S_PORT"
		  smtp_server = "127.0.0.1:$SUBMIT_PORT"
		  ca_file     = "$CA_FILE"
		}
		provider "fakeapp" {
		  tenant        = "$DOMAIN"
		  client_id     = "$APP_ID"
		  client_secret = env("PEERS_APP_SECRET")
		  authority     = "$IDP_URL"
		  imap_server   = "127.0.0.1:$IMAPS_PORT"
		  pop3_server   = "127.0.0.1:$POP3S_PORT"
		  smtp_server   = "127.0.0.1:$SUBMIT_PORT"
		  ca_file       = "$CA_FILE"
		}
		account "app" {
		  provider = "fakeapp"
		  mailbox  = "app@$DOMAIN"
		  flow     = "app"
		}
		provider "fakegraph" {
		  tenant    = "$DOMAIN"
		  client_id = "bridge-app"
		  authority = "$IDP_URL"
		  graph_url = "$GRAPH_URL"
		  ca_file   = "$T/graph-ca.pem"
		}
		account "graphpop" {
		  provider = "fakegraph"
		  mailbox  = "graphpop@$DOMAIN"
		  read_via = "graph"
		}
	EOF
	for g in $GRAPH_ACCOUNTS; do
		echo "account \"$g\" {"
		echo "  provider = \"fakegraph\""
		echo "  mailbox  = \"$g@$DOMAIN\""
		echo "  read_via = \"graph\""
		echo "  send_via = \"graph\""
		echo "}"
	done
	for a in $ACCOUNTS; do
		IFS=: read -r name local deleg sendas <<<"$a"
		echo "account \"$name\" {"
		echo "  provider = \"fake\""
		echo "  mailbox  = \"$local@$DOMAIN\""
		[ "$deleg" = - ] || echo "  delegate = \"$deleg@$DOMAIN\""
		if [ -n "$sendas" ]; then
			echo "  send_as  = [$(echo "$sendas" | tr ',' '\n' | sed "s/.*/\"&@$DOMAIN\"/" | paste -sd,)]"
		fi
		echo "}"
	done
	# A password with IMAP quoted-specials, a brace literal look-alike,
	# spaces and a percent sign: each client must get it through intact.
	hash=$(printf '%s\n' "$PW_special" | "$BIN" hash-password -cost 10)
	echo "user \"special\" {"
	echo "  password_hash = \"$hash\""
	echo "  account       = \"curl\""
	echo "}"
	for u in $USERS; do
		hash=$(printf 'pw-%s\n' "${u%%=*}" | "$BIN" hash-password -cost 10)
		echo "user \"${u%%=*}\" {"
		echo "  password_hash = \"$hash\""
		echo "  account       = \"${u#*=}\""
		echo "}"
	done
} >"$T/bridge/config.hcl"
for u in $USERS; do export "PW_${u%%=*}=pw-${u%%=*}"; done
"$BIN" check -config "$T/bridge/config.hcl" >"$T/bridge/check.log" 2>&1 || {
	cat "$T/bridge/check.log" >&2
	exit 1
}
"$BIN" serve -config "$T/bridge/config.hcl" >"$T/bridge/bridge.log" 2>&1 &
BRIDGE_PID=$!
wait_port "$B_ADMIN" oauthbridge "$BRIDGE_PID"
wait_port "$B_IMAP" oauthbridge "$BRIDGE_PID"
ADMIN="http://127.0.0.1:$B_ADMIN"

# signin ACCOUNT UPN: device-code sign-in through the daemon's admin API,
# approved at the fake identity platform as UPN.
signin() {
	local acct=$1 upn=$2 code state i
	code=$(curl -sf -X POST -H 'X-OAuthBridge-Request: 1' "$ADMIN/api/accounts/$acct/device-login" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["user_code"])') || {
		fail bridge "signin-$acct" "device-login request failed"
		return 1
	}
	curl -sf -X POST --data-urlencode "code=$code" --data-urlencode "upn=$upn" "$IDP_URL/test/approve" >/dev/null || {
		fail bridge "signin-$acct" "fakeidp refused to approve $code"
		return 1
	}
	for i in $(seq 100); do
		state=$(account_state "$acct")
		[ "$state" = ok ] && return 0
		sleep 0.2
	done
	fail bridge "signin-$acct" "state $state after 20 s"
	return 1
}
account_state() {
	curl -sf "$ADMIN/api/accounts/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("state",""))' 2>/dev/null || echo "?"
}

signin_pids=()
for a in $ACCOUNTS; do
	IFS=: read -r name local deleg _ <<<"$a"
	who=$local
	[ "$deleg" = - ] || who=$deleg
	signin "$name" "$who@$DOMAIN" &
	signin_pids+=($!)
done
for g in $GRAPH_ACCOUNTS; do
	signin "$g" "$g@$DOMAIN" &
	signin_pids+=($!)
done
signin graphpop "graphpop@$DOMAIN" &
signin_pids+=($!)
wait "${signin_pids[@]}" || true # not a bare wait: the daemons are children too
n_accounts=$(($(wc -w <<<"$ACCOUNTS") + 1 + $(wc -w <<<"$GRAPH_ACCOUNTS")))
bad=$(grep -c '^FAIL bridge signin' "$RESULTS" || true)
if [ "$bad" = 0 ]; then pass bridge "device-login-$n_accounts-accounts"; fi
peers_log "bridge up: imap :$B_IMAP pop3 :$B_POP3 smtp :$B_SMTP admin :$B_ADMIN ($(($(date +%s) - START)) s)"

# ---- clients ----
# shellcheck source=scenarios.sh
. "$HERE/scenarios.sh"

peers_log "python"
record python3 "$HERE/clients.py" python
peers_log "python: IMAP served from Microsoft Graph"
record python3 "$HERE/clients.py" graph
app_scenarios
peers_log "curl"
curl_scenarios
peers_log "php"
php_scenarios
peers_log "perl"
perl_scenarios
peers_log "fetchmail"
fetchmail_scenarios
peers_log "served from Microsoft Graph: PHP, Perl, fetchmail"
php_graph_scenarios
perl_graph_scenarios
fetchmail_graph_scenarios
peers_log "POP3 served from Microsoft Graph"
# shellcheck source=graph.sh
if [ -f "$HERE/graph.sh" ]; then
	. "$HERE/graph.sh"
	graph_scenarios
	peers_log "getmail"
	# shellcheck source=getmail.sh
	. "$HERE/getmail.sh"
	getmail_scenarios
fi
peers_log "swaks"
swaks_scenarios
special_password_scenarios
peers_log "local TLS"
tls_scenarios
peers_log "stale client beside the helpdesk"
stale_client_scenario
peers_log "failure paths"
upstream_tempfail_scenario
upstream_restart_scenario
revoke_scenario

# The bridge survived everything.
if kill -0 "$BRIDGE_PID" 2>/dev/null && curl -sf "$ADMIN/healthz" >/dev/null; then
	pass bridge still-running
else
	fail bridge still-running "the bridge exited or /healthz fails; see $T/bridge/bridge.log"
fi
if grep -q 'panic\|DATA RACE' "$T/bridge/bridge.log"; then
	fail bridge no-panic "$(grep -m1 -A3 'panic\|DATA RACE' "$T/bridge/bridge.log")"
else
	pass bridge no-panic
fi

passed=$(grep -c '^PASS ' "$RESULTS" || true)
failed=$(grep -c '^FAIL ' "$RESULTS" || true)
peers_log "finished in $(($(date +%s) - START)) s"
echo "$passed passed, $failed failed"
SUMMARY_DONE=1
[ "$failed" = 0 ]

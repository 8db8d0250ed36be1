# shellcheck shell=bash
# Client scenarios of the real-peer suite that are shell commands (curl,
# fetchmail, swaks) or need the suite's process control (upstream restart,
# temporary failure, revoked refresh token). Sourced by run.sh after the
# bridge is up; uses pass/fail/record and the exported ports.

seed() { python3 "$HERE/clients.py" seed "$@"; }
find_msg() { python3 "$HERE/clients.py" find "$@"; }
rtag() { head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# ---- curl ----
curl_scenarios() {
	local box="curl@$DOMAIN" p out rc
	p="curl-$(rtag)"
	seed "$box" "$p-one"
	seed "$box" "$p-two"
	local auth=(--user "curl:$PW_curl" -s -S --max-time 30)

	out=$(curl "${auth[@]}" "imap://127.0.0.1:$B_IMAP/INBOX" -X "SEARCH SUBJECT $p-one" 2>&1) || true
	local n
	n=$(sed -n 's/^\* SEARCH \([0-9]*\).*/\1/p' <<<"$out" | tr -d '\r')
	if [ -n "$n" ]; then pass curl imap-search; else fail curl imap-search "$out"; fi

	out=$(curl "${auth[@]}" "imap://127.0.0.1:$B_IMAP/INBOX/;MAILINDEX=${n:-1}" 2>&1) || true
	if grep -q "Subject: $p-one" <<<"$out"; then pass curl imap-read; else fail curl imap-read "$out"; fi

	out=$(curl "${auth[@]}" "imap://127.0.0.1:$B_IMAP/" 2>&1) || true
	if grep -q 'Archive' <<<"$out" && grep -q 'INBOX' <<<"$out"; then pass curl imap-list; else fail curl imap-list "$out"; fi

	out=$(curl "${auth[@]}" "imap://127.0.0.1:$B_IMAP/INBOX" -X "STORE ${n:-1} +FLAGS \\Seen" 2>&1) &&
		out=$(curl "${auth[@]}" "imap://127.0.0.1:$B_IMAP/INBOX" -X "FETCH ${n:-1} FLAGS" 2>&1) || true
	if grep -q 'Seen' <<<"$out"; then pass curl imap-mark-seen; else fail curl imap-mark-seen "$out"; fi

	# POP3: list, retrieve, delete.
	out=$(curl "${auth[@]}" "pop3://127.0.0.1:$B_POP3/" 2>&1) || true
	local count
	count=$(grep -c '^[0-9]' <<<"$out" || true)
	if [ "$count" -ge 2 ]; then pass curl pop3-list; else fail curl pop3-list "$out"; fi
	out=$(curl "${auth[@]}" "pop3://127.0.0.1:$B_POP3/1" 2>&1) || true
	if grep -q "Subject: $p-" <<<"$out"; then pass curl pop3-retr; else fail curl pop3-retr "$out"; fi
	out=$(curl "${auth[@]}" "pop3://127.0.0.1:$B_POP3/1" -X DELE -I 2>&1) &&
		out=$(curl "${auth[@]}" "pop3://127.0.0.1:$B_POP3/" 2>&1) || true
	if [ "$(grep -c '^[0-9]' <<<"$out" || true)" = $((count - 1)) ]; then pass curl pop3-dele; else fail curl pop3-dele "list after DELE: $out"; fi

	# SMTP send, read back through IMAP.
	printf 'From: %s\r\nTo: %s\r\nSubject: %s-sent\r\n\r\nsent by curl\r\n' "$box" "$box" "$p" >"$T/curl-msg.eml"
	out=$(curl "${auth[@]}" "smtp://127.0.0.1:$B_SMTP" --mail-from "$box" --mail-rcpt "$box" -T "$T/curl-msg.eml" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && find_msg curl "$PW_curl" "$p-sent" >/dev/null 2>"$T/curl-find.err"; then
		pass curl smtp-send-read-back
	else
		fail curl smtp-send-read-back "curl rc=$rc $out $(cat "$T/curl-find.err")"
	fi

	out=$(curl -s -S --max-time 30 --user "curl:wrong" "imap://127.0.0.1:$B_IMAP/INBOX" -X NOOP 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 67 ]; then pass curl imap-wrong-password; else fail curl imap-wrong-password "curl rc=$rc (want 67 login denied) $out"; fi
	out=$(curl -s -S --max-time 30 --user "curl:wrong" "pop3://127.0.0.1:$B_POP3/" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 67 ]; then pass curl pop3-wrong-password; else fail curl pop3-wrong-password "curl rc=$rc (want 67) $out"; fi
	out=$(curl -s -S --max-time 30 --user "curl:wrong" "smtp://127.0.0.1:$B_SMTP" --mail-from "$box" --mail-rcpt "$box" -T "$T/curl-msg.eml" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 67 ]; then pass curl smtp-wrong-password; else fail curl smtp-wrong-password "curl rc=$rc (want 67) $out"; fi
}

# ---- PHP imap extension ----
php_scenarios() {
	local p box="php@$DOMAIN"
	p="php-$(rtag)"
	head -c 30000 /dev/urandom >"$T/php-attach.bin"
	for s in one two three; do seed "$box" "$p-$s"; done
	seed "$box" "$p-attach" --attach "$T/php-attach.bin"
	SUBJ_PREFIX=$p ATTACH_FILE="$T/php-attach.bin" record php "$HERE/clients.php"
}

# ---- Perl ----
perl_scenarios() {
	local p box="perl@$DOMAIN"
	p="perl-$(rtag)"
	for s in one two three; do seed "$box" "$p-$s"; done
	SUBJ_PREFIX=$p record perl "$HERE/clients.pl"
}

# Perl against an account served from Microsoft Graph (read_via = "graph"):
# the messages are sent through the bridge (send_via = "graph") into the
# fake Microsoft 365's mailbox; "Junk Email" stands in for Archive.
perl_graph_scenarios() {
	local p
	p="grpl-$(rtag)"
	for s in one two three; do python3 "$HERE/clients.py" graph-seed "$p-$s" grpl; done
	for s in one two three; do python3 "$HERE/clients.py" find grpl "$PW_grpl" "$p-$s" >/dev/null; done
	PERL_USER=grpl PERL_GRAPH=1 PERL_ARCHIVE="Junk Email" SUBJ_PREFIX=$p record perl "$HERE/clients.pl"
}

# PHP imap (c-client) against an account served from Microsoft Graph.
php_graph_scenarios() {
	local p s
	p="grph-$(rtag)"
	head -c 30000 /dev/urandom >"$T/grph-attach.bin"
	for s in one two three; do python3 "$HERE/clients.py" graph-seed "$p-$s" grph; done
	python3 "$HERE/clients.py" graph-seed "$p-attach" grph "$T/grph-attach.bin"
	for s in one two three attach; do python3 "$HERE/clients.py" find grph "$PW_grph" "$p-$s" >/dev/null; done
	PHP_USER=grph PHP_GRAPH=1 PHP_ARCHIVE="Junk Email" SUBJ_PREFIX=$p ATTACH_FILE="$T/grph-attach.bin" record php "$HERE/clients.php"
}

# ---- fetchmail ----
fetchmail_scenarios() {
	local p box="fm@$DOMAIN" d="$T/fetchmail" out rc
	p="fm-$(rtag)"
	mkdir -p "$d"
	chmod 0700 "$d"
	seed "$box" "$p-one"
	seed "$box" "$p-two"
	# IMAP, keep: both messages delivered to the MDA, still on the server.
	write_fetchmailrc imap keep
	out=$(run_fetchmail) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && grep -q "Subject: $p-one" "$d/mbox" && grep -q "Subject: $p-two" "$d/mbox"; then
		pass fetchmail imap-fetch-keep
	else
		fail fetchmail imap-fetch-keep "rc=$rc $out"
	fi
	# POP3, no keep: downloaded and deleted.
	: >"$d/mbox"
	write_fetchmailrc pop3 nokeep
	out=$(run_fetchmail) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && grep -q "Subject: $p-one" "$d/mbox" && grep -q "Subject: $p-two" "$d/mbox"; then
		pass fetchmail pop3-fetch-delete
	else
		fail fetchmail pop3-fetch-delete "rc=$rc $out"
	fi
	# Nothing left: fetchmail exits 1 ("no mail").
	out=$(run_fetchmail) && rc=0 || rc=$?
	if [ "$rc" = 1 ]; then pass fetchmail pop3-deleted-gone; else fail fetchmail pop3-deleted-gone "rc=$rc (want 1, no mail) $out"; fi
	# Wrong password: exit 3 (authentication failed).
	write_fetchmailrc pop3 keep wrong
	out=$(run_fetchmail) && rc=0 || rc=$?
	if [ "$rc" = 3 ]; then pass fetchmail wrong-password; else fail fetchmail wrong-password "rc=$rc (want 3) $out"; fi
}

# fetchmail IMAP against an account served from Microsoft Graph: keep,
# then fetch-and-delete (EXPUNGE moves to Deleted Items), then nothing left.
fetchmail_graph_scenarios() {
	local p d="$T/fetchmail" out rc
	p="grfm-$(rtag)"
	mkdir -p "$d"
	chmod 0700 "$d"
	: >"$d/mbox"
	python3 "$HERE/clients.py" graph-seed "$p-one" grfm
	python3 "$HERE/clients.py" graph-seed "$p-two" grfm
	python3 "$HERE/clients.py" find grfm "$PW_grfm" "$p-two" >/dev/null
	write_fetchmailrc imap keep "$PW_grfm" grfm
	out=$(run_fetchmail) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && grep -q "Subject: $p-one" "$d/mbox" && grep -q "Subject: $p-two" "$d/mbox"; then
		pass fetchmail-graph imap-fetch-keep
	else
		fail fetchmail-graph imap-fetch-keep "rc=$rc $out"
	fi
	: >"$d/mbox"
	write_fetchmailrc imap "nokeep fetchall" "$PW_grfm" grfm
	out=$(run_fetchmail) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && grep -q "Subject: $p-one" "$d/mbox" && grep -q "Subject: $p-two" "$d/mbox"; then
		pass fetchmail-graph imap-fetch-delete
	else
		fail fetchmail-graph imap-fetch-delete "rc=$rc $out"
	fi
	out=$(run_fetchmail) && rc=0 || rc=$?
	if [ "$rc" = 1 ]; then pass fetchmail-graph imap-deleted-gone; else fail fetchmail-graph imap-deleted-gone "rc=$rc (want 1, no mail) $out"; fi
}

write_fetchmailrc() {
	local proto=$1 keep=$2 pw=${3:-$PW_fm} user=${4:-fm} port=$B_POP3
	[ "$proto" = imap ] && port=$B_IMAP
	cat >"$T/fetchmail/rc" <<-EOF
		set no syslog
		poll 127.0.0.1 service $port protocol $proto auth password timeout 30
		  user "$user" password "$pw" is root here
		  $keep
		  sslproto ''
		  mda "/bin/sh -c 'cat >> $T/fetchmail/mbox'"
	EOF
	chmod 0600 "$T/fetchmail/rc"
}

run_fetchmail() {
	HOME="$T/fetchmail" FETCHMAILHOME="$T/fetchmail" timeout 60 fetchmail -f "$T/fetchmail/rc" \
		--pidfile "$T/fetchmail/pid" --nodetach -v 2>&1 | tail -15
	return "${PIPESTATUS[0]}"
}

# ---- swaks ----
swaks_scenarios() {
	local p box="swaks@$DOMAIN" out rc
	p="swaks-$(rtag)"
	local base=(--server "127.0.0.1:$B_SMTP" --auth-user swaks --timeout 30 --to "$box" --suppress-data)

	out=$(swaks "${base[@]}" --auth LOGIN --auth-password "$PW_swaks" --from "$box" --header "Subject: $p-login" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && find_msg swaks "$PW_swaks" "$p-login" >/dev/null 2>&1; then pass swaks auth-login-send-read-back; else fail swaks auth-login-send-read-back "rc=$rc $(tail -5 <<<"$out")"; fi

	out=$(swaks "${base[@]}" --auth PLAIN --auth-password "$PW_swaks" --from "swaks-alias@$DOMAIN" --header "Subject: $p-alias" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && find_msg swaks "$PW_swaks" "$p-alias" | grep -q "swaks-alias@"; then pass swaks send-as-alias; else fail swaks send-as-alias "rc=$rc $(tail -5 <<<"$out")"; fi

	out=$(swaks "${base[@]}" --auth PLAIN --auth-password "$PW_swaks" --from "bob@$DOMAIN" --header "Subject: $p-spoof" 2>&1) && rc=0 || rc=$?
	# swaks exits 23 (MAIL rejected), 24 (RCPT) or 25 (DATA).
	if [ "$rc" -ge 23 ] && [ "$rc" -le 25 ]; then pass swaks spoof-refused; else fail swaks spoof-refused "rc=$rc $(grep '^<' <<<"$out" | tail -3)"; fi

	out=$(swaks "${base[@]}" --auth PLAIN --auth-password wrong --from "$box" --header "Subject: $p-wrong" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 28 ]; then pass swaks wrong-password; else fail swaks wrong-password "rc=$rc (want 28) $(grep '^<' <<<"$out" | tail -3)"; fi
}

# ---- failure paths ----

# Dovecot answers a temporary failure (its grant request gets 503):
# IMAP "NO [UNAVAILABLE] Temporary authentication failure", POP3
# "-ERR [SYS/TEMP] ...". The bridge must refuse the login as temporary
# (RFC 5530 UNAVAILABLE / RFC 3206 SYS/TEMP, so a legacy client retries
# instead of flagging a wrong password) and recover once Dovecot does.
upstream_tempfail_scenario() {
	local out
	curl -sf -X POST -d grant=503 "$IDP_URL/test/fault" >/dev/null
	out=$(timeout 60 python3 "$HERE/clients.py" imap-login py "$PW_py" 2>&1) || true
	echo "IMAP: $out" >"$T/tempfail.out"
	if [[ $out == NO*UNAVAILABLE* ]]; then pass python-imaplib upstream-tempfail-unavailable; else fail python-imaplib upstream-tempfail-unavailable "want NO [UNAVAILABLE], got $out"; fi
	out=$(timeout 60 python3 "$HERE/clients.py" pop3-login pop "$PW_pop" 2>&1) || true
	echo "POP3: $out" >>"$T/tempfail.out"
	if [[ $out == ERR*SYS/TEMP* ]]; then pass python-poplib upstream-tempfail-sys-temp; else fail python-poplib upstream-tempfail-sys-temp "want -ERR [SYS/TEMP], got $out"; fi
	curl -sf -X POST -d grant= "$IDP_URL/test/fault" >/dev/null
	out=$(timeout 60 python3 "$HERE/clients.py" imap-login py "$PW_py" 2>&1) || true
	if [ "$out" = OK ]; then pass python-imaplib upstream-tempfail-recovered; else fail python-imaplib upstream-tempfail-recovered "$out"; fi
}

# Dovecot (IMAP) or Postfix (SMTP) restarts while a client is logged in:
# the old session must end or fail cleanly (not hang), a new one must work.
upstream_restart_scenario() {
	hold_restart python-imaplib upstream-restart "hold py $PW_py" dovecot
	hold_restart python-smtplib upstream-restart "hold-smtp swaks $PW_swaks" postfix
}

# hold_restart CLIENT SCENARIO "clients.py ARGS" dovecot|postfix
hold_restart() {
	local client=$1 name=$2 args=$3 server=$4 fifo="$T/hold-$4.fifo" out="$T/hold-$4.out" hold_pid
	mkfifo "$fifo"
	# shellcheck disable=SC2086
	python3 "$HERE/clients.py" $args <"$fifo" >"$out" 2>&1 &
	hold_pid=$!
	exec 7>"$fifo"
	for _ in $(seq 100); do grep -q READY "$out" && break; sleep 0.1; done
	"stop_$server"
	"start_$server"
	echo go >&7
	exec 7>&-
	for _ in $(seq 600); do kill -0 "$hold_pid" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$hold_pid" 2>/dev/null; then
		kill "$hold_pid"
		fail "$client" "$name" "client hung after the $server restart: $(cat "$out")"
		return
	fi
	wait "$hold_pid" || true
	# Acceptable for the old session: closed, a 4xx, or (SMTP) a transparent
	# re-dial that really delivered. A 5xx would make a legacy system bounce
	# or drop the message over a transient upstream restart.
	local old subject
	old=$(grep '^OLD' "$out" || true)
	case $old in
	"OLD sent "*)
		subject=$(awk '{print $3}' <<<"$old")
		find_msg swaks "$PW_swaks" "$subject" >/dev/null 2>&1 || old="$old (but never delivered)"
		;;
	esac
	if grep -q '^NEW new session OK' "$out" && [ -n "$old" ] &&
		! grep -q 'refused 5\|never delivered' <<<"$old"; then
		pass "$client" "$name"
		echo "$client $name: $old" >>"$T/notes"
	else
		fail "$client" "$name" "$(cat "$out")"
	fi
}

# The delegate's refresh tokens are revoked ("Revoke sessions"): once the
# short-lived access token is gone the bridge must refuse logins with a clear
# answer, mark the account needs_login, keep serving the other accounts,
# and accept a new sign-in.
revoke_scenario() {
	local out state i
	out=$(timeout 60 python3 "$HERE/clients.py" imap-login rv "$PW_rv" 2>&1) || true
	if [ "$out" != OK ]; then
		fail bridge revoke-before "login before revocation: $out"
		return
	fi
	curl -sf -X POST -d "upn=rv@$DOMAIN" "$IDP_URL/test/revoke" >/dev/null
	for i in $(seq 120); do
		state=$(account_state rv)
		[ "$state" = needs_login ] && break
		sleep 0.5
	done
	if [ "$state" = needs_login ]; then pass bridge revoke-needs-login; else fail bridge revoke-needs-login "state $state 60 s after revocation"; fi
	# The access token from before the revocation stays valid until it
	# expires (as at Microsoft); wait that out (TOKEN_LIFETIME is short).
	local left
	left=$(curl -sf "$ADMIN/api/accounts/rv" | python3 -c '
import json, sys, datetime
e = json.load(sys.stdin).get("access_token_expiry")
if not e:
    print(0)
else:
    t = datetime.datetime.fromisoformat(e.replace("Z", "+00:00"))
    print(max(0, int((t - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 2))')
	if [ "${left:-0}" -gt 0 ] && [ "$left" -le 120 ]; then
		peers_log "waiting ${left}s for rv's last access token to expire"
		sleep "$left"
	fi
	out=$(timeout 60 python3 "$HERE/clients.py" imap-login rv "$PW_rv" 2>&1) || true
	echo "$out" >"$T/revoke-imap.out"
	if [[ $out == NO* ]]; then pass python-imaplib revoked-login-refused; else fail python-imaplib revoked-login-refused "$out"; fi
	out=$(swaks --server "127.0.0.1:$B_SMTP" --auth PLAIN --auth-user rv --auth-password "$PW_rv" --timeout 30 \
		--from "rv@$DOMAIN" --to "rv@$DOMAIN" 2>&1) && i=0 || i=$?
	echo "$out" >"$T/revoke-smtp.out"
	if [ "$i" = 28 ] || [ "$i" = 23 ]; then pass swaks revoked-refused; else fail swaks revoked-refused "rc=$i $(grep '^<' <<<"$out" | tail -3)"; fi
	out=$(timeout 60 python3 "$HERE/clients.py" imap-login py "$PW_py" 2>&1) || true
	if [ "$out" = OK ]; then pass bridge revoke-others-unaffected; else fail bridge revoke-others-unaffected "$out"; fi
	# Sign in again with the CLI, as an operator would.
	if cli_login rv "rv@$DOMAIN"; then
		pass bridge cli-login
	else
		fail bridge cli-login "$(tr '\n' ' ' <"$T/cli-login.out")"
		signin rv "rv@$DOMAIN" || true
	fi
	if [ "$(timeout 60 python3 "$HERE/clients.py" imap-login rv "$PW_rv" 2>&1)" = OK ]; then
		pass bridge revoke-sign-in-again
	else
		fail bridge revoke-sign-in-again "new sign-in did not restore access"
	fi
}

# cli_login ACCOUNT UPN: `oauthbridge login` against the running daemon;
# reads the device code it prints and approves it at the fake.
cli_login() {
	local acct=$1 upn=$2 pid code rc
	: >"$T/cli-login.out"
	timeout 60 "$BIN" login -config "$T/bridge/config.hcl" "$acct" >"$T/cli-login.out" 2>&1 </dev/null &
	pid=$!
	for _ in $(seq 100); do
		code=$(awk '/enter the code/ { getline; getline; print $1; exit }' "$T/cli-login.out")
		[ -n "$code" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if [ -z "$code" ]; then
		wait "$pid" || true
		return 1
	fi
	curl -sf -X POST --data-urlencode "code=$code" --data-urlencode "upn=$upn" "$IDP_URL/test/approve" >/dev/null || return 1
	wait "$pid" && rc=0 || rc=$?
	[ "$rc" = 0 ] && grep -q 'Signed in' "$T/cli-login.out"
}

# ---- app flow (client credentials) ----
app_scenarios() {
	local p out box="app@$DOMAIN"
	p="app-$(rtag)"
	seed "$box" "$p-one"
	if find_msg appuser "$PW_appuser" "$p-one" >/dev/null 2>"$T/app-find.err"; then
		pass python-imaplib app-flow-read
	else
		fail python-imaplib app-flow-read "$(tail -2 "$T/app-find.err")"
	fi
	out=$(swaks --server "127.0.0.1:$B_SMTP" --auth PLAIN --auth-user appuser --auth-password "$PW_appuser" --timeout 30 \
		--from "$box" --to "$box" --header "Subject: $p-sent" 2>&1) || true
	if find_msg appuser "$PW_appuser" "$p-sent" >/dev/null 2>&1; then
		pass swaks app-flow-send-read-back
	else
		fail swaks app-flow-send-read-back "$(grep '^<\*\*\|^\*\*\*' <<<"$out" | tail -3)"
	fi
}

# ---- the bridge's own TLS: STARTTLS and implicit TLS, certificate checked ----
tls_scenarios() {
	local p box="curl@$DOMAIN" out rc
	p="tls-$(rtag)"
	seed "$box" "$p-one"
	local auth=(--user "curl:$PW_curl" -s -S --max-time 30 --cacert "$CA_FILE")

	out=$(curl "${auth[@]}" "imaps://localhost:$B_IMAPS/INBOX" -X "SEARCH SUBJECT $p-one" 2>&1) || true
	if grep -q '^\* SEARCH [0-9]' <<<"$out"; then pass curl imaps-implicit-tls; else fail curl imaps-implicit-tls "$out"; fi
	out=$(curl "${auth[@]}" --ssl-reqd "imap://localhost:$B_IMAP/INBOX" -X "SEARCH SUBJECT $p-one" 2>&1) || true
	if grep -q '^\* SEARCH [0-9]' <<<"$out"; then pass curl imap-starttls; else fail curl imap-starttls "$out"; fi
	out=$(curl "${auth[@]}" "pop3s://localhost:$B_POP3S/" 2>&1) || true
	if grep -q '^[0-9]' <<<"$out"; then pass curl pop3s-implicit-tls; else fail curl pop3s-implicit-tls "$out"; fi
	out=$(curl "${auth[@]}" --ssl-reqd "pop3://localhost:$B_POP3/" 2>&1) || true
	if grep -q '^[0-9]' <<<"$out"; then pass curl pop3-stls; else fail curl pop3-stls "$out"; fi

	local sbase=(--server localhost --auth PLAIN --auth-user swaks --auth-password "$PW_swaks" --timeout 30
		--from "swaks@$DOMAIN" --to "swaks@$DOMAIN" --tls-verify --tls-ca-path "$CA_FILE")
	out=$(swaks "${sbase[@]}" --port "$B_SMTP" --tls --header "Subject: $p-starttls" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && find_msg swaks "$PW_swaks" "$p-starttls" >/dev/null 2>&1; then pass swaks smtp-starttls; else fail swaks smtp-starttls "rc=$rc $(grep '^<\*\*\|^\*\*\*' <<<"$out" | tail -3)"; fi
	out=$(swaks "${sbase[@]}" --port "$B_SMTPS" --tls-on-connect --header "Subject: $p-smtps" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && find_msg swaks "$PW_swaks" "$p-smtps" >/dev/null 2>&1; then pass swaks smtps-implicit-tls; else fail swaks smtps-implicit-tls "rc=$rc $(grep '^<\*\*\|^\*\*\*' <<<"$out" | tail -3)"; fi

	# (c-client prints a notice that the bridge advertises AUTH=PLAIN without
	# TLS; on loopback that is by design, so notices are off.)
	out=$(php -r 'error_reporting(E_ALL & ~E_NOTICE & ~E_WARNING);
		$c = imap_open("{127.0.0.1:'"$B_IMAPS"'/imap/ssl/novalidate-cert}INBOX", "php", getenv("PW_php"), 0, 1);
		if ($c === false) { echo "FAIL ", implode(" | ", imap_errors() ?: []); exit(1); }
		echo "OK ", imap_num_msg($c); imap_close($c);' 2>&1) || true
	if [[ $out == OK* ]]; then pass php-imap imaps-novalidate-cert; else fail php-imap imaps-novalidate-cert "$out"; fi

	out=$(perl -MMail::IMAPClient -e '
		my $c = Mail::IMAPClient->new(Server => "localhost", Port => $ARGV[0], User => "perl", Password => $ENV{PW_perl},
			Ssl => [SSL_ca_file => $ENV{CA_FILE}], Timeout => 20) or die "login: $@\n";
		$c->select("INBOX") or die "select\n"; print "OK\n"; $c->logout;' "$B_IMAPS" 2>&1) || true
	if [ "$out" = OK ]; then pass perl-imapclient imaps-verified; else fail perl-imapclient imaps-verified "$out"; fi
}

# ---- a password full of special characters, through every client ----
special_password_scenarios() {
	local out rc
	out=$(python3 -c '
import imaplib, os, poplib, smtplib
pw = os.environ["PW_special"]
m = imaplib.IMAP4("127.0.0.1", int(os.environ["B_IMAP"]), timeout=20); m.login("special", pw); m.logout()
m = imaplib.IMAP4("127.0.0.1", int(os.environ["B_IMAP"]), timeout=20)
m.authenticate("PLAIN", lambda _: b"\0special\0" + pw.encode()); m.logout()
p = poplib.POP3("127.0.0.1", int(os.environ["B_POP3"]), timeout=20); p.user("special"); p.pass_(pw); p.quit()
s = smtplib.SMTP("127.0.0.1", int(os.environ["B_SMTP"]), timeout=20); s.ehlo(); s.login("special", pw); s.quit()
print("OK")' 2>&1) || true
	if [ "$out" = OK ]; then pass python special-password-imap-pop3-smtp; else fail python special-password-imap-pop3-smtp "$out"; fi
	out=$(curl -s -S --max-time 30 --user "special:$PW_special" "imap://127.0.0.1:$B_IMAP/INBOX" -X NOOP 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ]; then pass curl special-password-imap; else fail curl special-password-imap "rc=$rc $out"; fi
	out=$(curl -s -S --max-time 30 --login-options AUTH=LOGIN --user "special:$PW_special" "imap://127.0.0.1:$B_IMAP/INBOX" -X NOOP 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ]; then pass curl special-password-imap-sasl-login; else fail curl special-password-imap-sasl-login "rc=$rc $out"; fi
	out=$(curl -s -S --max-time 30 --user "special:$PW_special" "pop3://127.0.0.1:$B_POP3/" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ]; then pass curl special-password-pop3; else fail curl special-password-pop3 "rc=$rc $out"; fi
	# (c-client prints a notice that the bridge advertises AUTH=PLAIN without
	# TLS; on loopback that is by design, so notices are off.)
	out=$(php -r 'error_reporting(E_ALL & ~E_NOTICE & ~E_WARNING);
		$c = imap_open("{127.0.0.1:'"$B_IMAP"'/imap/notls}INBOX", "special", getenv("PW_special"), 0, 1);
		if ($c === false) { echo "FAIL ", implode(" | ", imap_errors() ?: []); exit(1); }
		echo "OK"; imap_close($c);' 2>&1) || true
	if [ "$out" = OK ]; then pass php-imap special-password; else fail php-imap special-password "$out"; fi
	out=$(perl -MMail::IMAPClient -e '
		my $c = Mail::IMAPClient->new(Server => "127.0.0.1", Port => $ARGV[0], User => "special",
			Password => $ENV{PW_special}, Timeout => 20) or die "login: $@\n";
		print "OK\n"; $c->logout;' "$B_IMAP" 2>&1) || true
	if [ "$out" = OK ]; then pass perl-imapclient special-password; else fail perl-imapclient special-password "$out"; fi
	out=$(swaks --server "127.0.0.1:$B_SMTP" --auth LOGIN --auth-user special --auth-password "$PW_special" --timeout 30 \
		--from "curl@$DOMAIN" --to "curl@$DOMAIN" --quit-after AUTH 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ]; then pass swaks special-password; else fail swaks special-password "rc=$rc $(grep '^<\*\*\|^\*\*\*' <<<"$out" | tail -2)"; fi
}

# ---- a stale-password client beside the helpdesk ----
# Everything reaches the bridge from 127.0.0.1, as on a real host. Real
# clients with a stale password loop (curl over IMAP and POP3, swaks over
# SMTP) while real clients log in as otrs with the right password on all
# three protocols: first the stale client is another user of the same
# mailbox (cron), then otrs itself. Every right login must succeed; no stale
# one may; the bridge log must show the stale user's checked failures from
# 127.0.0.1 and never "too many failed logins".
stale_client_scenario() {
	stale_round cron other-user
	stale_round otrs same-user
	if grep -q 'too many failed logins' "$T/bridge/bridge.log"; then
		fail bridge stale-client-log "the log says 'too many failed logins': $(grep -m1 'too many failed logins' "$T/bridge/bridge.log")"
	else
		pass bridge stale-client-log
	fi
}

# stale_loop PROTO USER STOPFILE LOG: one stale client, until STOPFILE exists.
stale_loop() {
	local proto=$1 user=$2 stop=$3 log=$4 rc
	while [ ! -e "$stop" ]; do
		case $proto in
		imap) curl -s --max-time 60 --user "$user:stale-$RANDOM" "imap://127.0.0.1:$B_IMAP/INBOX" -X NOOP >/dev/null 2>&1 && rc=0 || rc=$? ;;
		pop3) curl -s --max-time 60 --user "$user:stale-$RANDOM" "pop3://127.0.0.1:$B_POP3/" >/dev/null 2>&1 && rc=0 || rc=$? ;;
		smtp) swaks --server "127.0.0.1:$B_SMTP" --auth PLAIN --auth-user "$user" --auth-password "stale-$RANDOM" \
			--quit-after AUTH --timeout 60 >/dev/null 2>&1 && rc=0 || rc=$? ;;
		esac
		echo "$proto $rc" >>"$log"
	done
}

# stale_round STALE_USER NAME
stale_round() {
	local user=$1 name=$2 stop="$T/stale-$1.stop" log="$T/stale-$1.log" pids=() p i out rc
	local bad_imap="" bad_pop3="" bad_smtp=""
	: >"$log"
	# Four loops: more than one check a second, so with otrs as the stale
	# user its checks run dry and it is throttled.
	for p in imap imap pop3 smtp; do
		stale_loop "$p" "$user" "$stop" "$log" &
		pids+=($!)
	done
	sleep 2
	for i in 1 2 3; do
		out=$(timeout 90 python3 "$HERE/clients.py" imap-login otrs "$PW_otrs" 2>&1) || true
		[ "$out" = OK ] || bad_imap="$bad_imap login $i: $out;"
		out=$(timeout 90 python3 "$HERE/clients.py" pop3-login otrs "$PW_otrs" 2>&1) || true
		[ "$out" = OK ] || bad_pop3="$bad_pop3 login $i: $out;"
		out=$(swaks --server "127.0.0.1:$B_SMTP" --auth PLAIN --auth-user otrs --auth-password "$PW_otrs" \
			--quit-after AUTH --timeout 60 2>&1) && rc=0 || rc=$?
		[ "$rc" = 0 ] || bad_smtp="$bad_smtp login $i: rc=$rc $(grep '^<' <<<"$out" | tail -1);"
	done
	touch "$stop"
	wait "${pids[@]}" || true
	local n ok checked
	n=$(wc -l <"$log")
	ok=$(grep -c ' 0$' "$log" || true)
	checked=$(grep -c "\"user\":\"$user\",\"remote\":\"127.0.0.1\",\"result\":\"bad_credentials\"" "$T/bridge/bridge.log" || true)
	if [ -z "$bad_imap" ]; then pass python-imaplib "stale-$name-beside-helpdesk"; else fail python-imaplib "stale-$name-beside-helpdesk" "$bad_imap"; fi
	if [ -z "$bad_pop3" ]; then pass python-poplib "stale-$name-beside-helpdesk"; else fail python-poplib "stale-$name-beside-helpdesk" "$bad_pop3"; fi
	if [ -z "$bad_smtp" ]; then pass swaks "stale-$name-beside-helpdesk"; else fail swaks "stale-$name-beside-helpdesk" "$bad_smtp"; fi
	if [ "$n" -ge 4 ] && [ "$ok" = 0 ] && [ "$checked" -ge 1 ]; then
		pass curl+swaks "stale-$name-client-refused"
	else
		fail curl+swaks "stale-$name-client-refused" "$n stale attempts, $ok accepted (want 0), $checked checked failures from 127.0.0.1 in the log"
	fi
}

# shellcheck shell=bash
# Scenarios for an account served from the fake's Microsoft Graph
# (read_via = "graph"), sourced by run.sh: Python poplib and fetchmail
# (keep, then delete) talk POP3 to the bridge, which reads the mailbox
# through Graph. Mail goes in with fakeidp's /test/deliver, into the store
# the fake's Graph serves.

graph_deliver() { # MAILBOX SUBJECT
	curl -sf -X POST --data-urlencode "mailbox=$1" \
		--data-urlencode "message=$(printf 'From: peers@example.com\r\nTo: %s\r\nSubject: %s\r\n\r\nbody of %s\r\n.dot line\r\n' "$1" "$2" "$2")" \
		"$IDP_URL/test/deliver" >/dev/null
}

graph_folder_count() { # MAILBOX FOLDER
	curl -sfG --data-urlencode "mailbox=$1" --data-urlencode "folder=$2" "$IDP_URL/test/folder" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'
}

graph_scenarios() {
	local box="graphpop@$DOMAIN" d="$T/fetchmail-graph" p out rc before
	record python3 "$HERE/clients.py" graph-pop
	p="gfm-$(rtag)"
	mkdir -p "$d"
	chmod 0700 "$d"
	graph_deliver "$box" "$p-one"
	graph_deliver "$box" "$p-two"
	before=$(graph_folder_count "$box" INBOX)
	graph_fetchmailrc keep
	out=$(HOME="$d" FETCHMAILHOME="$d" timeout 90 fetchmail -f "$d/rc" --pidfile "$d/pid" --nodetach -v 2>&1 | tail -15) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && grep -q "Subject: $p-one" "$d/mbox" && grep -q "Subject: $p-two" "$d/mbox" &&
		[ "$(graph_folder_count "$box" INBOX)" = "$before" ]; then
		pass fetchmail graph-pop3-fetch-keep
	else
		fail fetchmail graph-pop3-fetch-keep "rc=$rc $out"
	fi
	: >"$d/mbox"
	# fetchall: the keep run recorded the UIDLs as seen.
	graph_fetchmailrc "nokeep fetchall"
	out=$(HOME="$d" FETCHMAILHOME="$d" timeout 90 fetchmail -f "$d/rc" --pidfile "$d/pid" --nodetach -v 2>&1 | tail -15) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && grep -q "Subject: $p-one" "$d/mbox" && grep -q "Subject: $p-two" "$d/mbox" &&
		[ "$(graph_folder_count "$box" INBOX)" = 0 ]; then
		pass fetchmail graph-pop3-fetch-delete
	else
		fail fetchmail graph-pop3-fetch-delete "rc=$rc inbox=$(graph_folder_count "$box" INBOX) $out"
	fi
	out=$(HOME="$d" FETCHMAILHOME="$d" timeout 90 fetchmail -f "$d/rc" --pidfile "$d/pid" --nodetach -v 2>&1 | tail -15) && rc=0 || rc=$?
	if [ "$rc" = 1 ]; then pass fetchmail graph-pop3-deleted-gone; else fail fetchmail graph-pop3-deleted-gone "rc=$rc (want 1, no mail) $out"; fi
}

graph_fetchmailrc() {
	cat >"$T/fetchmail-graph/rc" <<-EOF
		set no syslog
		poll 127.0.0.1 service $B_POP3 protocol pop3 auth password timeout 60
		  user "gpop" password "$PW_gpop" is root here
		  $1
		  sslproto ''
		  mda "/bin/sh -c 'cat >> $T/fetchmail-graph/mbox'"
	EOF
	chmod 0600 "$T/fetchmail-graph/rc"
}

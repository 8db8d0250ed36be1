# shellcheck shell=bash
# getmail (getmail6) scenarios, sourced by run.sh after graph.sh (it uses
# graph_deliver and graph_folder_count). getmail reaches the bridge on
# 127.0.0.1 with a local password and delivers to a Maildir under $T.
#   grgp: Graph-served account, SimplePOP3Retriever keep, then delete
#         (pop3_delete default "move": the messages go to Deleted Items).
#   grgi: Graph-served account, SimpleIMAPRetriever keep, then delete
#         (EXPUNGE moves to Deleted Items).
#   gm:   an IMAP-spliced (Dovecot) account, SimplePOP3Retriever delete.

# write_getmailrc NAME TYPE PORT USER PASSWORD DELETE: a getmail rc file
# $T/getmail/NAME/rc delivering to $T/getmail/NAME/Maildir/.
write_getmailrc() {
	local d="$T/getmail/$1"
	mkdir -p "$d/Maildir/new" "$d/Maildir/cur" "$d/Maildir/tmp"
	cat >"$d/rc" <<-EOF
		[retriever]
		type = $2
		server = 127.0.0.1
		port = $3
		username = $4
		password = $5
		timeout = 60

		[destination]
		type = Maildir
		path = $d/Maildir/

		[options]
		read_all = true
		delete = $6
		verbose = 1
		message_log = $d/log
	EOF
	chmod 0700 "$d"
	chmod 0600 "$d/rc"
	# getmail runs as an unprivileged user, like a cron job (it refuses
	# to deliver as root anyway).
	chown -R nobody:nogroup "$d"
}

# run_getmail NAME: one getmail run as nobody; prints its last lines,
# returns its status.
run_getmail() {
	local d="$T/getmail/$1"
	HOME="$d" timeout 90 setpriv --reuid=nobody --regid=nogroup --clear-groups getmail --rcfile "$d/rc" --getmaildir "$d" 2>&1 | tail -15
	return "${PIPESTATUS[0]}"
}

# getmail_has NAME SUBJECT: a message with that subject, its body and its
# dot-leading line intact, is in the Maildir.
getmail_has() {
	local f
	f=$(grep -l "^Subject: $2" "$T/getmail/$1/Maildir/new/"* 2>/dev/null | head -1) || true
	[ -n "$f" ] && grep -q "^body of $2" "$f" && grep -q '^\.dot line' "$f"
}

getmail_count() { find "$T/getmail/$1/Maildir/new" -type f | wc -l; }

# getmail_graph NAME RETRIEVER PORT PROTO: a Graph-served account read by
# getmail with RETRIEVER on PORT, first keeping the messages (the INBOX is
# unchanged), then deleting them (they move to Deleted Items). The bridge
# user, the mailbox's local part and the password variable PW_NAME share
# NAME; PROTO names the scenarios (graph-PROTO-keep, ...).
getmail_graph() {
	local name=$1 retriever=$2 port=$3 proto=$4
	local box="$name@$DOMAIN" pwvar="PW_$name" p out rc inbox trash
	p="$name-$(rtag)"
	graph_deliver "$box" "$p-one"
	graph_deliver "$box" "$p-two"
	inbox=$(graph_folder_count "$box" INBOX)
	trash=$(graph_folder_count "$box" "Deleted Items")
	write_getmailrc "$name" "$retriever" "$port" "$name" "${!pwvar}" false
	out=$(run_getmail "$name") && rc=0 || rc=$?
	if [ "$rc" = 0 ] && getmail_has "$name" "$p-one" && getmail_has "$name" "$p-two" &&
		[ "$(graph_folder_count "$box" INBOX)" = "$inbox" ]; then
		pass getmail "graph-$proto-keep"
	else
		fail getmail "graph-$proto-keep" "rc=$rc inbox=$(graph_folder_count "$box" INBOX) (want $inbox) $out"
	fi
	rm -f "$T/getmail/$name/Maildir/new/"*
	write_getmailrc "$name" "$retriever" "$port" "$name" "${!pwvar}" true
	out=$(run_getmail "$name") && rc=0 || rc=$?
	if [ "$rc" = 0 ] && getmail_has "$name" "$p-one" && getmail_has "$name" "$p-two" &&
		[ "$(graph_folder_count "$box" INBOX)" = 0 ] &&
		[ "$(graph_folder_count "$box" "Deleted Items")" = $((trash + 2)) ]; then
		pass getmail "graph-$proto-delete-moves-to-deleted-items"
	else
		fail getmail "graph-$proto-delete-moves-to-deleted-items" "rc=$rc inbox=$(graph_folder_count "$box" INBOX) (want 0) deleted-items=$(graph_folder_count "$box" "Deleted Items") (want $((trash + 2))) $out"
	fi
}

# The IMAP-spliced account: POP3 delete against Dovecot behind the bridge,
# then a second run finds nothing.
getmail_spliced_pop3() {
	local box="gm@$DOMAIN" p out rc f
	p="gm-$(rtag)"
	seed "$box" "$p-one"
	write_getmailrc gm SimplePOP3Retriever "$B_POP3" gm "$PW_gm" true
	out=$(run_getmail gm) && rc=0 || rc=$?
	f=$(grep -l "^Subject: $p-one" "$T/getmail/gm/Maildir/new/"* 2>/dev/null | head -1) || true
	if [ "$rc" = 0 ] && [ -n "$f" ]; then
		pass getmail pop3-delete
	else
		fail getmail pop3-delete "rc=$rc $out"
	fi
	out=$(run_getmail gm) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && [ "$(getmail_count gm)" = 1 ]; then
		pass getmail pop3-deleted-gone
	else
		fail getmail pop3-deleted-gone "rc=$rc maildir=$(getmail_count gm) (want 1) $out"
	fi
}

getmail_scenarios() {
	getmail_graph grgp SimplePOP3Retriever "$B_POP3" pop3
	getmail_graph grgi SimpleIMAPRetriever "$B_IMAP" imap
	getmail_spliced_pop3
}

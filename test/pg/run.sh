#!/usr/bin/env bash
# Starts a throwaway PostgreSQL from Debian's packages in its own temporary
# directory, listening on 127.0.0.1 only at a port the kernel picked, runs
# the given command with OAUTHBRIDGE_TEST_PG_DSN pointing at it, and tears
# the server down again (also on failure or Ctrl-C).
#
# Usage: test/pg/run.sh COMMAND [ARG...]
#        e.g. test/pg/run.sh go test -race -count=1 -run PG ./tokens/
# As root it installs the postgresql package when initdb is missing, and
# runs the server as the unprivileged user "nobody" (PostgreSQL refuses to
# run as root). As another user it runs the server as that user.
# Env: PG_KEEP=1 keeps the temp dir (server log) afterwards.
set -euo pipefail

if [ $# -eq 0 ]; then
	echo "usage: $0 COMMAND [ARG...]" >&2
	exit 2
fi

pgbin() {
	# The newest installed major version.
	ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BIN=$(pgbin)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "pg: PostgreSQL is not installed; run 'apt-get install -y postgresql' as root" >&2
		exit 1
	fi
	echo "pg: installing Debian's postgresql package" >&2
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
	BIN=$(pgbin)
fi

T=$(mktemp -d /tmp/oauthbridge-pg.XXXXXX)
RUNAS=()
if [ "$(id -u)" = 0 ]; then
	chown nobody "$T"
	RUNAS=(runuser -u nobody --)
fi
chmod 0700 "$T"

cleanup() {
	local rc=$?
	set +e
	if [ -f "$T/data/postmaster.pid" ]; then
		"${RUNAS[@]}" "$BIN/pg_ctl" -D "$T/data" -m immediate -w stop >/dev/null 2>&1
	fi
	if [ "${PG_KEEP:-}" = 1 ] || [ $rc != 0 ]; then
		echo "pg: server files and log kept in $T" >&2
	else
		rm -rf "$T"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A password, so the tests exercise a DSN that carries a secret.
PASS=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$PASS" >"$T/pwfile"
[ "$(id -u)" = 0 ] && chown nobody "$T/pwfile"

"${RUNAS[@]}" "$BIN/initdb" -D "$T/data" -U oauthbridge --pwfile="$T/pwfile" \
	-A scram-sha-256 -E UTF8 --no-locale >"$T/initdb.log" 2>&1 || {
	cat "$T/initdb.log" >&2
	exit 1
}
rm -f "$T/pwfile"

# A port from the kernel: bind port 0, read it, release it. The race with
# another process taking it before PostgreSQL binds is retried below.
freeport() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

started=0
for _ in 1 2 3 4 5; do
	PORT=$(freeport)
	if "${RUNAS[@]}" "$BIN/pg_ctl" -D "$T/data" -l "$T/server.log" -w -t 60 \
		-o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$T -c max_connections=100 -c fsync=off" \
		start >/dev/null 2>&1; then
		started=1
		break
	fi
done
if [ $started != 1 ]; then
	echo "pg: PostgreSQL did not start; its log:" >&2
	cat "$T/server.log" >&2 || true
	exit 1
fi

export OAUTHBRIDGE_TEST_PG_DSN="postgres://oauthbridge:$PASS@127.0.0.1:$PORT/postgres?sslmode=disable"
echo "pg: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT (data in $T)" >&2
set +e
"$@"
rc=$?
set -e
exit $rc

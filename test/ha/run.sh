#!/usr/bin/env bash
# The process-level high-availability test (make hatest; part of make
# check): three `oauthbridge serve` processes share one throwaway
# PostgreSQL (test/pg/run.sh, Debian's package) in front of the fake
# Microsoft 365 (test/peers/fakeidp) with 16-second access tokens, while
# IMAP and SMTP logins run against all three from 127.0.0.1. The lease
# holder is killed (SIGKILL) in the middle of a refresh and restarted,
# another holder is stopped (SIGSTOP) past its lease and resumed; the fake
# identity platform counts the redemptions of each sign-in's refresh token
# and any stale one presented. See test/ha/hadriver for the checks.
#
# Prints PASS/FAIL lines and "N passed, M failed"; exits 1 on a failure.
# As root it installs what it needs with apt-get and runs the replicas as
# the unprivileged user nobody. Env: GO (default go), HA_KEEP=1 keeps the
# work dir (replica logs, the fake's log).
set -euo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}

if ! command -v python3 >/dev/null 2>&1; then
	# test/pg/run.sh asks the kernel for a free port with it.
	if [ "$(id -u)" != 0 ]; then
		echo "ha: python3 is missing; run 'apt-get install -y python3' as root" >&2
		exit 1
	fi
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null
fi

T=$(mktemp -d /tmp/oauthbridge-ha.XXXXXX)
chmod 0755 "$T"
cleanup() {
	local rc=$?
	if [ "${HA_KEEP:-}" = 1 ] || [ $rc != 0 ]; then
		echo "ha: logs kept in $T" >&2
	else
		rm -rf "$T"
	fi
	exit $rc
}
trap cleanup EXIT

echo "ha: building oauthbridge, fakeidp and the driver" >&2
"$GO" build -o "$T/oauthbridge" ./cmd/oauthbridge
"$GO" build -o "$T/fakeidp" ./test/peers/fakeidp
"$GO" build -o "$T/hadriver" ./test/ha/hadriver
mkdir -m 0755 "$T/work"

bash test/pg/run.sh "$T/hadriver" -bin "$T/oauthbridge" -fakeidp "$T/fakeidp" -work "$T/work" "$@"

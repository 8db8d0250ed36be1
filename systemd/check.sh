#!/bin/sh
# check.sh: lint systemd/oauthbridge.service.
#   1. systemd-analyze verify: the unit parses, with no warnings (unknown keys,
#      bad values and typos are only warnings to systemd, so any output fails);
#   2. systemd-analyze security --offline=yes: the exposure score is 2.0 or lower.
# The unit's ExecStart names /usr/bin/oauthbridge, which need not exist
# here, so the checks run on a temporary copy whose ExecStart points at a
# stand-in executable. Exits 0 with "skipped: ..." when systemd-analyze is
# missing (CI containers without systemd).
#
# Usage: systemd/check.sh [path/to/oauthbridge.service]
set -eu

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "skipped: systemd-analyze not available"
	exit 0
fi

unit=${1:-$(dirname "$0")/oauthbridge.service}
# Exposure threshold in tenths, as --threshold expects: 20 = 2.0.
threshold=${THRESHOLD:-20}
if [ ! -r "$unit" ]; then
	echo "check.sh: cannot read $unit" >&2
	exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# A stand-in binary: verify only checks that ExecStart is executable.
printf '#!/bin/sh\nexit 0\n' >"$tmp/oauthbridge"
chmod 0755 "$tmp/oauthbridge"
sed "s#/usr/bin/oauthbridge#$tmp/oauthbridge#g" "$unit" >"$tmp/oauthbridge.service"

fail=0

echo "== systemd-analyze verify"
if ! out=$(systemd-analyze verify --man=no --generators=no "$tmp/oauthbridge.service" 2>&1); then
	fail=1
fi
if [ -n "$out" ]; then
	printf '%s\n' "$out" | sed "s#$tmp/##g"
	fail=1
fi
[ "$fail" -eq 0 ] && echo "ok"

echo "== systemd-analyze security (threshold $threshold = $((threshold / 10)).$((threshold % 10)))"
if ! sec=$(systemd-analyze security --offline=yes --threshold="$threshold" "$tmp/oauthbridge.service" 2>&1); then
	printf '%s\n' "$sec" | grep '✗' || true
	fail=1
fi
printf '%s\n' "$sec" | grep 'Overall exposure level' | sed "s#$tmp/##g" || {
	echo "check.sh: no exposure score in systemd-analyze output:" >&2
	printf '%s\n' "$sec" >&2
	fail=1
}

if [ "$fail" -ne 0 ]; then
	echo "FAIL"
	exit 1
fi
echo "PASS"

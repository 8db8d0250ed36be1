#!/usr/bin/env bash
# make promtool: checks and unit-tests the Prometheus alerting rules in
# contrib/prometheus with promtool (Debian's prometheus package, installed
# here as root when missing; its service is kept from starting).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR="$ROOT/contrib/prometheus"

if ! command -v promtool >/dev/null 2>&1; then
	if [ "$(id -u)" != 0 ]; then
		echo "promtool: missing; install Debian's prometheus package (apt-get install --no-install-recommends prometheus) or run as root" >&2
		exit 2
	fi
	echo "promtool: installing Debian's prometheus package for promtool"
	log=$(mktemp)
	# policy-rc.d exit 101: the package's postinst must not start the
	# Prometheus server on this machine (CI, a developer's box).
	created=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		created=1
	fi
	rc=0
	{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; } >"$log" 2>&1 || rc=$?
	[ "$created" = 1 ] && rm -f /usr/sbin/policy-rc.d
	if [ "$rc" != 0 ]; then
		tail -20 "$log" >&2
		rm -f "$log"
		exit 2
	fi
	rm -f "$log"
	# Without systemd (a container) nothing was started; with it the
	# policy kept the unit down, but it is enabled: disable it.
	if [ -d /run/systemd/system ]; then
		systemctl disable --now prometheus >/dev/null 2>&1 || true
	fi
fi

promtool check rules "$DIR/alerts.yml"
promtool test rules "$DIR/alerts_test.yml"

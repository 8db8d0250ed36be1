#!/usr/bin/env bash
# Runs the admin page's browser test in Debian's headless Chromium. Installs
# chromium when missing and running as root (CI); otherwise says why it
# cannot run and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! grep -rlq '//go:build browser' --include='*_test.go' . ; then
	echo "browser: no browser tests yet"
	exit 0
fi
if ! command -v chromium >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ]; then
		echo "browser: installing chromium from Debian's packages"
		apt-get update -qq >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
	else
		echo "browser: chromium is not installed and we are not root; install Debian's chromium package" >&2
		exit 1
	fi
fi
go test -tags browser -race -count=1 -run Browser ./internal/admin/

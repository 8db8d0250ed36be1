#!/usr/bin/env bash
# Runs every Go fuzz target for a short time ($1, default 30s). The seed and
# found corpora live in each package's testdata/fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-30s}"
found=0
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for f in $(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\)' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/'); do
		found=$((found+1))
		echo "fuzz: $pkg $f for $t"
		go test -run '^$' -fuzz "^${f}\$" -fuzztime "$t" "$pkg"
	done
done
echo "fuzz: $found target(s) run"

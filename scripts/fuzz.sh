#!/usr/bin/env bash
# Runs every Go fuzz target for a short time ($1, default 30s). The seed and
# found corpora live in each package's testdata/fuzz.
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is mid-call on a busy machine
# (golang/go#75804, fixed in Go 1.27). That is not a finding: a real one
# writes "Failing input written to testdata/fuzz/...". Such a run is retried
# once; a second bare deadline with no reproducer is reported and tolerated.
# Every other failure fails the target at once.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-30s}"
found=0
flaked=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# deadline_flake LOG: the run failed only on the coordinator's deadline.
deadline_flake() {
	grep -q 'context deadline exceeded' "$1" &&
		! grep -qE 'Failing input written|panic:|^\s+\S+_test\.go:[0-9]+:' "$1"
}

for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for f in $(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\)' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/'); do
		found=$((found+1))
		for attempt in 1 2; do
			echo "fuzz: $pkg $f for $t"
			if go test -run '^$' -fuzz "^${f}\$" -fuzztime "$t" "$pkg" 2>&1 | tee "$log"; then
				break
			fi
			if ! deadline_flake "$log"; then
				echo "fuzz: $pkg $f FAILED" >&2
				exit 1
			fi
			if [ "$attempt" = 2 ]; then
				echo "fuzz: $pkg $f: the fuzz coordinator's deadline race again (golang/go#75804), no failing input: tolerated" >&2
				flaked=$((flaked+1))
			else
				echo "fuzz: $pkg $f: bare 'context deadline exceeded' and no failing input (golang/go#75804): retrying once" >&2
			fi
		done
	done
done
echo "fuzz: $found target(s) run, $flaked tolerated deadline race(s)"

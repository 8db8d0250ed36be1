# oauthbridge developer commands. `make check` is what CI runs (.ci/run).
GO      ?= go
GOFILES := $(shell git ls-files '*.go' 2>/dev/null)

.PHONY: check fmt vet test pgtest fuzz peers browser systemd bench bench-quick gobench demo build

## check: everything CI runs: formatting, vet, fuzz smoke, systemd unit, real peers, browser, then every go test with -race (with a PostgreSQL for the shared token store's tests)
check: fmt vet fuzz systemd peers browser test

build:
	$(GO) build -o bin/oauthbridge ./cmd/oauthbridge

fmt:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

## test: unit tests (net.Pipe, transcripts) and in-process end-to-end tests against the fake Microsoft 365;
## test/pg/run.sh starts a throwaway PostgreSQL (Debian's, installed as root if missing) for the shared-store tests
test:
	bash test/pg/run.sh $(GO) test -race -count=1 -timeout 15m ./...

## pgtest: only the shared token store's tests, against a throwaway PostgreSQL (several replicas, leases, database down)
pgtest:
	bash test/pg/run.sh $(GO) test -race -count=1 -run 'PG' ./tokens/

## fuzz: a short run of every fuzz target (FUZZTIME=30s by default)
FUZZTIME ?= 30s
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

## systemd: systemd-analyze verify + security score of systemd/oauthbridge.service (skipped without systemd-analyze)
systemd:
	@if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "systemd: installing Debian's systemd for systemd-analyze"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; \
	fi
	@bash systemd/check.sh

## peers: Dovecot + Postfix demanding XOAUTH2, real clients in front of the bridge (installs Debian packages as root)
peers:
	@bash test/peers/run.sh

## browser: the status page's Connect button in headless Chromium against the fake identity platform
browser:
	@bash scripts/browser.sh

## bench: the bridge against direct XOAUTH2 connections, side by side in one run (a few minutes)
bench:
	$(GO) run ./cmd/oauthbridge-bench

## bench-quick: the same, CI-sized (well under a minute)
bench-quick:
	$(GO) run ./cmd/oauthbridge-bench -quick -markdown=false

## gobench: go test benchmarks of the hot paths (pre-auth parse, credential check, splice, relay)
gobench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

demo:
	$(GO) run ./cmd/oauthbridge demo

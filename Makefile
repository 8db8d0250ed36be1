# oauthbridge developer commands. `make check` is what CI runs (.ci/run).
GO      ?= go
GOFILES := $(shell git ls-files '*.go' 2>/dev/null)

.PHONY: check fmt vet lint promtool test pgtest pgbench hatest fuzz fuzz-long peers browser systemd bench bench-strict bench-quick gobench demo build release deb install uninstall install-test

## check: everything CI runs: formatting, vet, staticcheck (lint), the Prometheus alerting rules (promtool), fuzz smoke, systemd unit, the .deb installed and run as the unit would, real peers, browser, three bridges sharing one PostgreSQL (hatest), then every go test with -race (with a PostgreSQL for the shared token store's tests)
check: fmt vet lint promtool fuzz systemd install-test peers browser hatest test

build:
	$(GO) build -o bin/oauthbridge ./cmd/oauthbridge

# ---- release build, Debian package, install from source ----
# VERSION: see packaging/version.sh (git describe, Debian-compatible; override with VERSION=...).
VERSION := $(shell sh packaging/version.sh)
ARCH    ?= $(shell $(GO) env GOARCH)
LDFLAGS := -s -w -X github.com/oauthbridge/oauthbridge/internal/cli.buildVersion=$(VERSION)

## release: a static, reproducible binary with the version stamped in (build/oauthbridge)
release:
	@mkdir -p build
	CGO_ENABLED=0 GOARCH=$(ARCH) $(GO) build -trimpath -buildvcs=false -ldflags "$(LDFLAGS)" -o build/oauthbridge ./cmd/oauthbridge
	gzip -9nc packaging/oauthbridge.8 >build/oauthbridge.8.gz

## deb: the Debian package build/oauthbridge_VERSION_ARCH.deb (nfpm, pinned in packaging/tools/go.mod)
deb: release
	@rm -f build/oauthbridge_*.deb
	$(GO) -C packaging/tools build -o $(CURDIR)/build/nfpm github.com/goreleaser/nfpm/v2/cmd/nfpm
	VERSION=$(VERSION) ARCH=$(ARCH) build/nfpm package --config packaging/nfpm.yaml --packager deb --target build/
	@ls build/oauthbridge_*.deb

## install: from source, for those not using the package (PREFIX=/usr/local, DESTDIR for staging)
PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
MANDIR      ?= $(PREFIX)/share/man
SYSCONFDIR  ?= /etc
install: release
	install -D -m 0755 build/oauthbridge $(DESTDIR)$(BINDIR)/oauthbridge
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(MANDIR)/man8
	sed 's#/usr/bin/oauthbridge#$(BINDIR)/oauthbridge#g' systemd/oauthbridge.service >$(DESTDIR)$(UNITDIR)/oauthbridge.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/oauthbridge.service
	install -m 0644 packaging/sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/oauthbridge.conf
	install -m 0644 build/oauthbridge.8.gz $(DESTDIR)$(MANDIR)/man8/oauthbridge.8.gz
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/oauthbridge
	install -d -m 0700 $(DESTDIR)$(SYSCONFDIR)/oauthbridge/credentials
	@# An existing configuration is never overwritten.
	[ -e $(DESTDIR)$(SYSCONFDIR)/oauthbridge/config.hcl ] || install -m 0640 config.hcl.example $(DESTDIR)$(SYSCONFDIR)/oauthbridge/config.hcl
	@# Installing into the live system (no DESTDIR) as root: the service user and the config's group, as the package does.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
		getent passwd oauthbridge >/dev/null || systemd-sysusers $(SYSUSERSDIR)/oauthbridge.conf 2>/dev/null || \
			{ getent group oauthbridge >/dev/null || groupadd --system oauthbridge; \
			  useradd --system --gid oauthbridge --home-dir /var/lib/oauthbridge --no-create-home --shell /usr/sbin/nologin oauthbridge; }; \
		chown root:oauthbridge $(SYSCONFDIR)/oauthbridge/config.hcl; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
		echo "installed; edit $(SYSCONFDIR)/oauthbridge/config.hcl, then: systemctl enable --now oauthbridge"; \
	else \
		echo "staged in $(DESTDIR); on the target: systemd-sysusers, chown root:oauthbridge $(SYSCONFDIR)/oauthbridge/config.hcl"; \
	fi

## uninstall: remove what install put in place (keeps the configuration, credentials and token store)
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/oauthbridge $(DESTDIR)$(UNITDIR)/oauthbridge.service \
		$(DESTDIR)$(SYSUSERSDIR)/oauthbridge.conf $(DESTDIR)$(MANDIR)/man8/oauthbridge.8.gz

## install-test: build the .deb, install it with dpkg, run the packaged binary exactly as the unit would (as root; installs Debian packages)
install-test:
	@bash test/install/run.sh

fmt:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

## promtool: check and unit-test contrib/prometheus/alerts.yml with promtool (installs Debian's prometheus package as root if missing, without starting its service)
promtool:
	@bash scripts/promtool.sh

## lint: staticcheck, pinned in packaging/lint/go.mod (a module of its own, so its dependencies never move the bridge's)
lint:
	$(GO) -C packaging/lint build -o $(CURDIR)/build/staticcheck honnef.co/go/tools/cmd/staticcheck
	$(CURDIR)/build/staticcheck ./...

## test: unit tests (net.Pipe, transcripts, the patched go-smtp in third_party) and in-process end-to-end tests against the fake Microsoft 365;
## test/pg/run.sh starts a throwaway PostgreSQL (Debian's, installed as root if missing) for the shared-store tests
test:
	bash test/pg/run.sh $(GO) test -race -count=1 -timeout 15m ./...
	@# The patched go-smtp is a module of its own (third_party/go-smtp/PATCHES.md): upstream's tests and the patch's.
	cd third_party/go-smtp && $(GO) test -race -count=1 ./...

## pgtest: only the shared token store's tests, against a throwaway PostgreSQL (several replicas, leases, database down)
pgtest:
	bash test/pg/run.sh $(GO) test -race -count=1 -run 'PG' ./tokens/

## pgbench: the token store's benchmarks (file and PostgreSQL): logins per second, statements per refresh, queries a minute at 100 accounts
pgbench:
	bash test/pg/run.sh $(GO) test -run '^$$' -bench 'LoginToken|PGRefresh' -benchmem ./tokens/

## hatest: three real bridges on one throwaway PostgreSQL, IMAP/SMTP logins throughout, the lease holder killed mid-refresh and another stopped past its lease; counts redemptions at the fake identity platform (about a minute; installs Debian packages as root)
hatest:
	@GO=$(GO) bash test/ha/run.sh

## fuzz: a smoke run of every fuzz target in make check (FUZZTIME=10s by default; the corpora in testdata/fuzz also run in go test)
FUZZTIME ?= 10s
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

## fuzz-long: every fuzz target for FUZZLONG (5m by default), outside CI
FUZZLONG ?= 5m
fuzz-long:
	@bash scripts/fuzz.sh $(FUZZLONG)

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

## bench-strict: the full run, exiting 1 when a target is missed (for a quiet machine, not CI)
bench-strict:
	$(GO) run ./cmd/oauthbridge-bench -strict

## bench-quick: a CI-sized run (well under a minute); a missed target does not fail it
bench-quick:
	$(GO) run ./cmd/oauthbridge-bench -quick -markdown=false

## gobench: go test benchmarks of the hot paths (pre-auth parse, credential check, splice, relay)
gobench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

demo:
	$(GO) run ./cmd/oauthbridge demo

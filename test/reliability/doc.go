// Package reliability holds oauthbridge's reliability and security suite:
// fault injection against the fake Microsoft 365 (token endpoint down or
// hanging, revoked grants, dropped upstream connections, SIGKILL during a
// token-store write, an unwritable state directory) and abuse of the local
// listeners (oversized input, slowloris, connection floods, password
// guessing, cross-account access, secrets in logs and metrics).
//
// Everything runs in-process against internal/fakems on loopback:
//
//	go test -race ./test/reliability/
package reliability

// Package frontdoor holds what the IMAP, POP3 and SMTP proxies share in
// front of a login:
//
//   - the server loop (server.go): one accept policy that backs off and
//     retries every transient error (EMFILE, ENFILE, ENOBUFS, ...) and
//     reports a listener that dies for good; connection tracking,
//     max_connections counted from the accept (handshakes included) and
//     refused through TLS, panic recovery, and one drain (pre-auth sessions end with the protocol's
//     text, spliced ones run until the shutdown context ends, a login that
//     completes during the drain is refused). Where a library owns the
//     loop (go-smtp), Handoff feeds it the admitted connections;
//   - the login pipeline (login.go): Gate.Login runs the local credential,
//     resolves the account with one rule (the configuration snapshot the
//     connection was accepted under), takes the per-account connection
//     slot and returns a Grant, the single point where a proxy learns
//     "login succeeded, here is the account and its token source"; the
//     Grant's Token maps token errors to Failure kinds. PlaintextAllowed is
//     the one plaintext-password rule;
//   - the kinds of login failure (failure.go: one Failure type from the
//     password check to the upstream's answer) and the per-connection
//     failure policy (policy.go). Each proxy keeps one switch from Kind to
//     its wire text (failureReply).
package frontdoor

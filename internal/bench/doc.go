// Package bench measures what the bridge costs a client: every workload runs
// directly against the fake Microsoft 365 upstream (TLS + XOAUTH2) and
// through a bridge configured against the same fake, in alternating rounds
// of one run, so both figures share the machine's state at that moment.
//
// Workloads: IMAP bulk FETCH throughput, IMAP login latency with a warm
// token, many concurrent IDLE sessions (bridge RSS per session), SMTP
// messages per second over several connections, one large SMTP message
// (bridge peak RSS growth), and the token requests the fake identity
// platform saw during all of it. The RSS workloads need the bridge in a
// separate process (Options.BridgeBinary) so that the client's and the
// fake's memory is not counted.
package bench

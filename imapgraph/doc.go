// Package imapgraph serves IMAP from Microsoft Graph for accounts with
// read_via = "graph", scoped to what helpdesk fetchers do. It runs go-imap's
// imapserver over connections the IMAP proxy has already logged in
// (ServeLoggedIn turns imapserver's PREAUTH greeting into the answer to
// the client's LOGIN), with a Session backed by a Mailbox: in production
// GraphMailbox over graphmail (its per-mailbox limiter of 4 requests,
// throttling and delta-kept lists), in tests an in-memory one.
//
// State it keeps:
//   - per account and folder, a cache of the messages' ids, UIDs, flags,
//     sizes and dates (about 250 bytes a message), shared by the sessions;
//   - a bounded cache of fetched MIME (DefaultMIMECacheBytes);
//   - the UID map (UIDStore): UIDVALIDITY, UIDNEXT and immutable id -> UID
//     per folder, in an encrypted append-only file beside the token store,
//     synced before a UID is shown, so UIDs survive restarts and are never
//     reused.
//
// Limits of a session, as for spliced ones: imap { idle_timeout }
// (Options.IdleTimeout) bounds the client's silence between commands and
// in IDLE, ended with "* BYE Autologout; idle for too long"; a command
// that has begun must arrive within CommandTimeout (literals: imapserver's
// 5 minutes); MaxMessageBytes bounds a message read or appended. ID is
// answered as the proxy answers it before login (clientStream).
//
// \Deleted lives in the session until EXPUNGE; \Seen and \Flagged are
// Graph's isRead and follow-up flag. It knows no OAuth: tokens come with
// the Mailbox.
package imapgraph

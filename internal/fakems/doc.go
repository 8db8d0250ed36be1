// Package fakems is an in-process fake of the parts of Microsoft 365 that
// oauthbridge talks to: the Microsoft identity platform v2.0 (Entra ID token,
// device-code, authorize and admin-consent endpoints) and Exchange Online's
// IMAP (implicit TLS, like outlook.office365.com:993), POP3 (implicit TLS,
// like :995) and SMTP submission (STARTTLS, like smtp.office365.com:587)
// servers, which accept only SASL XOAUTH2 with tokens the fake issued, and
// Microsoft Graph's mail-sending API (see graph.go and GRAPH.md).
//
// Tokens carry their resource: Outlook scopes (https://outlook.office.com/...)
// give tokens for IMAP, POP3 and SMTP; Graph scopes
// (https://graph.microsoft.com/...) give tokens only the Graph endpoint
// accepts. One sign-in may consent to both; the refresh token is redeemed
// per resource, and a scope never consented to gets AADSTS65001.
//
// Everything listens on 127.0.0.1 with ephemeral ports. The identity
// platform is plain HTTP; the mail servers and Graph (GraphURL) use a
// certificate signed by a CA the fake generates at Start (see CAPEM,
// WriteCAFile and ClientTLS).
//
// The fake reproduces Microsoft's wire behaviour where oauthbridge depends
// on it (see shared/reference/microsoft-365.md): Entra's error JSON with
// AADSTS codes, refresh-token rotation, PKCE, single-use codes, RFC 8628
// device polling; Exchange's "NO AUTHENTICATE failed.", the IMAP "BAD User is
// authenticated but not connected." quirk, SMTP AUTH only after STARTTLS,
// "535 5.7.3", Send As policy, the three-connection SMTP limit, and POP3's
// two-step-only AUTH XOAUTH2.
//
// Tenant misconfigurations, each one call, for the tests of `oauthbridge
// doctor` (knobs.go, smtp.go, identity_hooks.go): SMTP AUTH disabled per
// mailbox or tenant (SetMailboxSMTPAuth, SetTenantSMTPAuthDisabled: "535
// 5.7.139"), IMAP or POP3 disabled per mailbox (SetIMAPEnabled,
// SetPOPEnabled), FullAccess taken back (RemoveFullAccess), Send As taken
// back (RemoveSendAs: "550 5.7.60" at MAIL FROM), consent withheld
// (WithholdConsent: AADSTS65001), and a skewed clock in the identity
// platform's Date header (SetClockSkew).
//
// Mailbox storage: each mailbox is an imapmemserver.User; the fake keeps the
// raw bytes of every message it stored by (folder, UID), and the current
// INBOX contents are whatever UIDs the IMAP mailbox still holds. Deliver,
// SMTP delivery, Graph sending, IMAP APPEND/COPY/MOVE/EXPUNGE, Messages and
// POP3 DELE+QUIT therefore all see the same mailbox.
package fakems

// Package graph is a small Microsoft Graph client for the mail calls
// oauthbridge makes on behalf of legacy clients. Sending (SMTP clients):
//
//	POST /v1.0/users/{id}/sendMail                       base64 MIME, 202
//	POST /v1.0/users/{id}/messages                       draft from base64 MIME, 201
//	POST /v1.0/users/{id}/messages/{msg}/attachments     small fileAttachment, 201
//	POST .../attachments/createUploadSession             upload session, 201
//	PUT  {uploadUrl}                                     ranged upload, no bearer token
//	POST /v1.0/users/{id}/messages/{msg}/send            202
//	DELETE /v1.0/users/{id}/messages/{msg}               drop a draft after a failure
//
// Reading (POP3 and IMAP served from Graph, mail.go; every read call asks
// for immutable ids with Prefer: IdType="ImmutableId"):
//
//	GET  .../mailFolders, .../mailFolders/{f}, .../childFolders      ListFolders, GetFolder, FolderByPath
//	GET  .../mailFolders/{f}/messages?$select&$top&$orderby&$expand   ListMessages (paged, PR_MESSAGE_SIZE)
//	GET  .../mailFolders/{f}/messages/delta, then next/delta links    DeltaMessages, Delta
//	GET  .../messages/{msg}, .../messages/{msg}/$value                GetMessage, MIME (streamed)
//	PATCH .../messages/{msg}                                          PatchMessage (isRead, flag)
//	POST .../messages/{msg}/move, /copy                               Move, Copy
//	POST .../mailFolders/{f}/messages                                 CreateMessageMIME (always a draft)
//
// Links in answers (@odata.nextLink, @odata.deltaLink) are followed only
// on graph_url's host.
//
// Authentication comes from a token function (tokens.Manager's Graph
// source); the client never speaks OAuth. Error answers
// ({"error":{"code","message"}}) become *Error with the HTTP status, the
// Graph code, the message and Retry-After. Throttling (429) and 503 are
// retried inside the client while the server's Retry-After fits in a
// bounded budget (MaxRetryWait); beyond it the *Error carries the wait so
// the caller can tell its client when to come back. A 401 drops the token
// (Rejected) and retries once with a fresh one.
//
// Request bodies are streamed: a message is never held in memory whole.
// Callers pass a function that opens the body again for a retry.
package graph

// Package graph is a small Microsoft Graph client for the mail-sending
// calls oauthbridge makes on behalf of legacy SMTP clients:
//
//	POST /v1.0/users/{id}/sendMail                       base64 MIME, 202
//	POST /v1.0/users/{id}/messages                       draft from base64 MIME, 201
//	POST /v1.0/users/{id}/messages/{msg}/attachments     small fileAttachment, 201
//	POST .../attachments/createUploadSession             upload session, 201
//	PUT  {uploadUrl}                                     ranged upload, no bearer token
//	POST /v1.0/users/{id}/messages/{msg}/send            202
//	DELETE /v1.0/users/{id}/messages/{msg}               drop a draft after a failure
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

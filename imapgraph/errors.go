package imapgraph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Client-facing texts; the detail goes to the bridge log.
const (
	textTemporary   = "Microsoft 365 is busy or unreachable; try again later"
	textThrottled   = "Microsoft 365 is throttling this mailbox; try again later"
	textPermission  = "Microsoft Graph refused access to the mailbox: the app registration needs the Mail.ReadWrite permission (Mail.ReadWrite.Shared for a shared mailbox) with admin consent; then run 'oauthbridge login %s'"
	textSignIn      = "Microsoft Graph refused the bridge's token: run 'oauthbridge login %s'"
	textNotEnabled  = "the mailbox is not enabled for Microsoft Graph (inactive, soft-deleted or on-premises); see the bridge log"
	textNotFound    = "message or folder no longer exists in the mailbox"
	textUnsupported = "not supported by this Graph-served mailbox (helpdesk profile)"
)

// retryable reports whether a failed call may be repeated and after how
// long. idempotent calls also retry on 5xx; the others only on 429, where
// Graph refused the request without running it.
func retryable(err error, idempotent bool) (time.Duration, bool) {
	ge, ok := graph.AsError(err)
	if !ok {
		return 0, false
	}
	switch {
	case ge.Status == http.StatusTooManyRequests:
		return ge.RetryAfter, true
	case idempotent && (ge.Status == http.StatusServiceUnavailable || ge.Status == http.StatusGatewayTimeout || ge.Status == http.StatusBadGateway):
		return ge.RetryAfter, true
	}
	return 0, false
}

// retry runs op until it succeeds, fails for good, or the retries would
// wait longer than budget in total (Options.ThrottleWait).
func (s *Server) retry(ctx context.Context, idempotent bool, op func() error) error {
	if s.opts.ThrottleWait < 0 {
		return op()
	}
	var waited time.Duration
	backoff := time.Second
	for {
		err := op()
		if err == nil {
			return nil
		}
		d, ok := retryable(err, idempotent)
		if !ok {
			return err
		}
		if d <= 0 {
			d, backoff = backoff, min(backoff*2, 30*time.Second)
		}
		if waited+d > s.opts.ThrottleWait {
			return err
		}
		waited += d
		s.opts.Logger.Info("Graph throttled or busy; retrying", "retry_after", d.String(), "error", err)
		if err := s.opts.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// imapError turns a backend error into the client's NO, logging the detail.
func (s *session) imapError(op string, err error) error {
	if err == nil {
		return nil
	}
	var ie *imap.Error
	if errors.As(err, &ie) {
		return ie
	}
	s.log.Warn("Graph-served IMAP command failed", "op", op, "error", err)
	no := func(code imap.ResponseCode, text string) *imap.Error {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: code, Text: text}
	}
	if errors.Is(err, ErrNotFound) {
		return no(imap.ResponseCodeNonExistent, textNotFound)
	}
	if ctxErr := s.ctx.Err(); ctxErr != nil {
		return no(imap.ResponseCodeUnavailable, "server shutting down; try again later")
	}
	if ge, ok := graph.AsError(err); ok {
		switch {
		case ge.Status == http.StatusTooManyRequests:
			return no(imap.ResponseCodeUnavailable, textThrottled)
		case ge.Status == http.StatusNotFound && ge.Code == graph.CodeMailboxNotEnabled:
			return no(imap.ResponseCodeContactAdmin, textNotEnabled)
		case ge.Status == http.StatusNotFound:
			return no(imap.ResponseCodeNonExistent, textNotFound)
		case ge.Status == http.StatusUnauthorized:
			return no(imap.ResponseCodeUnavailable, fmt.Sprintf(textSignIn, s.account))
		case ge.Status == http.StatusForbidden:
			return no(imap.ResponseCodeNoPerm, fmt.Sprintf(textPermission, s.account))
		case ge.Temporary():
			return no(imap.ResponseCodeUnavailable, textTemporary)
		}
		return no(imap.ResponseCodeUnavailable, "Microsoft Graph refused the request; see the bridge log")
	}
	var te *tokens.Error
	if errors.As(err, &te) {
		switch te.Kind {
		case tokens.NeedsLogin:
			return no(imap.ResponseCodeUnavailable, fmt.Sprintf("mailbox needs re-authorisation: run 'oauthbridge login %s'", s.account))
		case tokens.Failing:
			return no(imap.ResponseCodeUnavailable, "mailbox unavailable: bridge configuration problem, see the bridge log")
		}
	}
	return no(imap.ResponseCodeUnavailable, textTemporary)
}

func unsupported(what string) error {
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: what + " is " + textUnsupported}
}

package graph

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error is an error answer from Microsoft Graph (or from an upload URL).
// It never contains a token.
type Error struct {
	Op         string        // what the bridge was doing: "sendMail", "createDraft", ...
	Status     int           // HTTP status
	Code       string        // Graph's error.code, e.g. "ErrorSendAsDenied"
	Message    string        // Graph's error.message
	RetryAfter time.Duration // from Retry-After; 0 if absent
	RequestID  string        // Graph's request-id header, for Microsoft support
}

func (e *Error) Error() string {
	s := fmt.Sprintf("graph: %s: HTTP %d", e.Op, e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

// Temporary reports throttling and server-side trouble: 429 and 5xx.
func (e *Error) Temporary() bool {
	return e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// Well-known Graph error codes the bridge maps to SMTP replies.
const (
	CodeSendAsDenied      = "ErrorSendAsDenied"
	CodeAccessDenied      = "ErrorAccessDenied"
	CodeMailboxNotEnabled = "MailboxNotEnabledForRESTAPI"
	CodeInvalidToken      = "InvalidAuthenticationToken"
)

// IsODataDisabled reports Exchange's "Access to OData is disabled" answer:
// an application access policy or RBAC for Applications scope excludes the
// mailbox.
func (e *Error) IsODataDisabled() bool {
	return e.Status == http.StatusForbidden && strings.Contains(strings.ToLower(e.Message), "access to odata is disabled")
}

// AsError returns the *Error in err's chain.
func AsError(err error) (*Error, bool) {
	var ge *Error
	if errors.As(err, &ge) {
		return ge, true
	}
	return nil, false
}

// TransportError is a request that got no HTTP answer. Sent reports that
// the request body may have reached Graph completely, so the operation may
// have taken effect (a sendMail may have been delivered).
type TransportError struct {
	Op   string
	Sent bool
	Err  error
}

func (e *TransportError) Error() string { return "graph: " + e.Op + ": " + e.Err.Error() }
func (e *TransportError) Unwrap() error { return e.Err }

// maxErrorBody caps the error document read from Graph.
const maxErrorBody = 64 << 10

func parseError(op string, resp *http.Response, body []byte, now time.Time) *Error {
	e := &Error{Op: op, Status: resp.StatusCode, RequestID: resp.Header.Get("request-id")}
	var doc struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &doc) == nil {
		e.Code, e.Message = doc.Error.Code, doc.Error.Message
	}
	if e.Message == "" && e.Code == "" {
		e.Message = strings.TrimSpace(string(body))
		if len(e.Message) > 200 {
			e.Message = e.Message[:200]
		}
	}
	e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), now)
	return e
}

// retryAfter parses Retry-After: delta-seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d.Round(time.Second)
		}
	}
	return 0
}

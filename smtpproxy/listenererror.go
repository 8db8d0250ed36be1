package smtpproxy

import "github.com/oauthbridge/oauthbridge/internal/frontdoor"

// ListenerError is what Serve returns (wrapped, for smtpproxy) when its
// listener fails for good, not because of Shutdown: Proto and Addr name
// the listener, Err is the Accept error. Match it with errors.As; a caller
// that keeps serving without the listener serves nobody on that port.
type ListenerError = frontdoor.ListenerError

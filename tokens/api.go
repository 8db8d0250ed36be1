package tokens

import "time"

// State is an account's token state as shown by status, metrics and the
// admin page.
type State string

const (
	StateOK         State = "ok"          // a valid or refreshable token
	StateNeedsLogin State = "needs_login" // a person must run `oauthbridge login ACCOUNT`
	StateFailing    State = "failing"     // configuration/app registration problem, or refresh failing for a while
	StateUnknown    State = "unknown"     // app flow: no token requested yet (a delegated account without a sign-in is needs_login)
)

// AccountStatus is one row of `oauthbridge status`, the admin page and
// GET /api/accounts. It never contains a token or a secret.
type AccountStatus struct {
	Account     string    `json:"account"`
	Mailbox     string    `json:"mailbox"`
	Flow        string    `json:"flow"`
	Delegate    string    `json:"delegate,omitempty"`
	SignedInAs  string    `json:"signed_in_as,omitempty"`
	State       State     `json:"state"`
	Expiry      time.Time `json:"access_token_expiry,omitzero"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Fix         string    `json:"fix,omitempty"`
	AADSTS      int       `json:"aadsts,omitempty"`
	// LeaseHolder is the replica that holds the account's refresh lease in
	// a shared token store, until LeaseUntil; empty when none does.
	LeaseHolder string    `json:"lease_holder,omitempty"`
	LeaseUntil  time.Time `json:"lease_until,omitzero"`

	// Sending. SendVia is the configured send_via; SendPath the path in use
	// now ("smtp" or "graph"; with send_via = "auto" it says why it is on
	// Graph in SendPathReason). The Graph* fields describe the Microsoft
	// Graph token of an account that sends through Graph.
	SendVia        string    `json:"send_via,omitempty"`
	SendPath       string    `json:"send_path,omitempty"`
	SendPathReason string    `json:"send_path_reason,omitempty"`
	SendPathSince  time.Time `json:"send_path_since,omitzero"`
	GraphExpiry    time.Time `json:"graph_token_expiry,omitzero"`
	GraphError     string    `json:"graph_error,omitempty"`
	GraphFix       string    `json:"graph_fix,omitempty"`

	// ClientSecretExpires is the account's provider's client_secret_expires
	// (zero when not configured); alerts warn before it.
	ClientSecretExpires time.Time `json:"client_secret_expires,omitzero"`
}

// DeviceLogin is a started device-code login: what the person must open and
// type. Tokens and device codes are not in it.
type DeviceLogin struct {
	Account         string    `json:"account"`
	VerificationURI string    `json:"verification_uri"`
	UserCode        string    `json:"user_code"`
	Expires         time.Time `json:"expires"`
	Interval        int       `json:"interval"`
	Message         string    `json:"message,omitempty"`
}

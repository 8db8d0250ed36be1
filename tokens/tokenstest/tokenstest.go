// Package tokenstest holds token sources for tests: the proxies' tests hand
// out fixed tokens without a token manager.
package tokenstest

import (
	"context"
	"fmt"

	"github.com/oauthbridge/oauthbridge/tokens"
)

// StaticSource is a tokens.Source that hands out fixed tokens.
type StaticSource map[string]string

var _ tokens.Source = StaticSource(nil)

// AccessToken returns the account's fixed token, or a needs_login error.
func (s StaticSource) AccessToken(_ context.Context, account string) (string, error) {
	t, ok := s[account]
	if !ok {
		return "", &tokens.Error{Account: account, Kind: tokens.NeedsLogin, Reason: "no token", Fix: fmt.Sprintf("run 'oauthbridge login %s'", account)}
	}
	return t, nil
}

// Rejected does nothing: a fixed token stays what it is.
func (s StaticSource) Rejected(string, string) {}

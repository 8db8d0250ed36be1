package graphmail

import (
	"context"
	"net/http"

	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// resourceSource is a token source that serves several resources (a
// *tokens.Manager).
type resourceSource interface {
	For(tokens.Resource) tokens.Source
}

// TokenSource returns the Microsoft Graph token source of a bridge
// component: override when it is set (tests), else base's Graph source
// when base serves several resources (a *tokens.Manager), else nil.
func TokenSource(override, base tokens.Source) tokens.Source {
	if override != nil {
		return override
	}
	if rs, ok := base.(resourceSource); ok {
		return rs.For(tokens.Graph)
	}
	return nil
}

// NewClient returns the graph.Client of account on baseURL (the provider's
// graph_url) over hc, with src's Graph tokens; src's Rejected is told
// about a token Graph refused. With a nil src every call fails with a
// *tokens.Error (a wiring bug, reported as such).
func NewClient(baseURL string, hc *http.Client, account string, src tokens.Source) *graph.Client {
	return &graph.Client{
		BaseURL: baseURL,
		HTTP:    hc,
		Token: func(ctx context.Context) (string, error) {
			if src == nil {
				return "", &tokens.Error{Account: account, Kind: tokens.Failing, Reason: "no Microsoft Graph token source", Fix: "report this bridge bug"}
			}
			return src.AccessToken(ctx, account)
		},
		Rejected: func(tok string) {
			if src != nil {
				src.Rejected(account, tok)
			}
		},
	}
}

package graphmail_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/tokens"
	"github.com/oauthbridge/oauthbridge/tokens/tokenstest"
)

// rotating hands out t1, t2, ... per account and records what it is told.
type rotating struct {
	mu       sync.Mutex
	n        int
	asked    []string // accounts
	rejected []string // account/token
}

func (r *rotating) AccessToken(_ context.Context, account string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	r.asked = append(r.asked, account)
	return []string{"", "t1", "t2", "t3"}[min(r.n, 3)], nil
}

func (r *rotating) Rejected(account, tok string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rejected = append(r.rejected, account+"/"+tok)
}

// *tokens.Manager is what TokenSource finds a Graph source on.
var _ interface {
	For(tokens.Resource) tokens.Source
} = (*tokens.Manager)(nil)

// manager serves a Graph source apart from its default one, as
// *tokens.Manager does.
type manager struct {
	tokenstest.StaticSource
	graph tokens.Source
}

func (m manager) For(r tokens.Resource) tokens.Source {
	if r == tokens.Graph {
		return m.graph
	}
	return m
}

func TestTokenSource(t *testing.T) {
	outlook := tokenstest.StaticSource{"a": "outlook"}
	graphSrc := tokenstest.StaticSource{"a": "graph"}
	override := tokenstest.StaticSource{"a": "override"}
	m := manager{StaticSource: outlook, graph: graphSrc}
	for _, tc := range []struct {
		name           string
		override, base tokens.Source
		want           string // token for "a"; "" = no source
	}{
		{"override wins", override, m, "override"},
		{"the manager's Graph source", nil, m, "graph"},
		{"a single-resource source has no Graph tokens", nil, outlook, ""},
		{"nothing", nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := graphmail.TokenSource(tc.override, tc.base)
			if tc.want == "" {
				if src != nil {
					t.Fatalf("source = %#v, want nil", src)
				}
				return
			}
			if src == nil {
				t.Fatal("no source")
			}
			if tok, err := src.AccessToken(context.Background(), "a"); err != nil || tok != tc.want {
				t.Fatalf("token = %q, %v; want %q", tok, err, tc.want)
			}
		})
	}
}

// The client sends the account's token, tells the source about a token
// Graph refused with 401 and retries with a new one.
func TestNewClient(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer t2" {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":{"code":"InvalidAuthenticationToken","message":"expired"}}`)
			return
		}
		io.WriteString(w, `{"id":"inbox-id","displayName":"Inbox","totalItemCount":3}`)
	}))
	t.Cleanup(srv.Close)
	src := &rotating{}
	c := graphmail.NewClient(srv.URL, srv.Client(), "helpdesk", src)
	f, err := c.GetFolder(context.Background(), box, "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if f.ID != "inbox-id" {
		t.Errorf("folder = %+v", f)
	}
	if len(seen) != 2 || seen[0] != "Bearer t1" || seen[1] != "Bearer t2" {
		t.Errorf("Authorization headers = %q, want t1 then t2", seen)
	}
	if len(src.asked) != 2 || src.asked[0] != "helpdesk" || src.asked[1] != "helpdesk" {
		t.Errorf("tokens asked for %q, want helpdesk twice", src.asked)
	}
	if len(src.rejected) != 1 || src.rejected[0] != "helpdesk/t1" {
		t.Errorf("rejected = %q, want helpdesk/t1", src.rejected)
	}
}

// Without a token source every call fails with the account's token error,
// before any request.
func TestNewClientNoSource(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests.Add(1) }))
	t.Cleanup(srv.Close)
	c := graphmail.NewClient(srv.URL, srv.Client(), "helpdesk", nil)
	_, err := c.GetFolder(context.Background(), box, "inbox")
	var te *tokens.Error
	if !errors.As(err, &te) || te.Account != "helpdesk" || te.Kind != tokens.Failing || te.Fix == "" {
		t.Fatalf("error = %v, want a failing *tokens.Error for helpdesk that names the fix", err)
	}
	c.Rejected("t") // must not panic
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests sent without a token", n)
	}
}

package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/imapgraph"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// UIDMapKeyPurpose names the key, derived from the token store's key,
// that encrypts the IMAP UID map.
const UIDMapKeyPurpose = "imap uid map"

// graphIMAP is the IMAP served from Microsoft Graph for read_via = "graph"
// accounts: imapgraph over one graphmail.Mailbox per account.
type graphIMAP struct {
	srv       *imapgraph.Server
	mailboxes graphmail.Registry
	clients   graph.HTTPClients[*config.Provider] // one per provider
}

func newGraphIMAP(current func() *config.Config, m *tokens.Manager, log *slog.Logger) (*graphIMAP, error) {
	g := &graphIMAP{}
	g.mailboxes.Sizes = newGraphSizes(current().StateDir, m, log) // graphsizes.go
	src := m.For(tokens.Graph)
	srv, err := imapgraph.New(imapgraph.Options{
		Serves: func(a *config.Account) bool { return a.ReadsViaGraph() },
		Mailbox: func(name string) (imapgraph.Mailbox, error) {
			acct := current().AccountByName[name]
			if acct == nil || acct.Provider == nil {
				return nil, fmt.Errorf("daemon: account %q is not configured (any more)", name)
			}
			return imapgraph.NewGraphMailbox(g.mailbox(acct, src)), nil
		},
		OpenUIDs: func() (*imapgraph.UIDStore, error) {
			key, err := m.DerivedKey(UIDMapKeyPurpose)
			if err != nil {
				return nil, err
			}
			defer clear(key)
			return imapgraph.OpenUIDStore(current().StateDir, key)
		},
		Expunge: func(name string) string {
			if a := current().AccountByName[name]; a != nil && a.POP3Delete == config.POP3DeleteDelete {
				return imapgraph.ExpungeDelete
			}
			return imapgraph.ExpungeToDeletedItems
		},
		PollInterval: func() time.Duration { return current().IMAP.GraphPoll },
		// The idle timeout of spliced sessions applies to Graph-served ones.
		IdleTimeout:  func() time.Duration { return current().IMAP.Limits.IdleTimeout },
		ThrottleWait: -1, // graphmail waits out throttling (graphmail.DefaultMaxThrottleWait)
		Logger:       log.With("component", "imap-graph"),
	})
	if err != nil {
		return nil, err
	}
	g.srv = srv
	return g, nil
}

// mailbox returns the account's shared graphmail.Mailbox (its limiter of
// 4 requests and its delta lists serve every IMAP session of the account).
func (g *graphIMAP) mailbox(acct *config.Account, src tokens.Source) *graphmail.Mailbox {
	sig := fmt.Sprintf("%s|%s|%p", acct.Provider.GraphURL, acct.Mailbox, acct.Provider)
	return g.mailboxes.Get(acct.Name, sig, func() *graphmail.Mailbox {
		hc := g.clients.Get(acct.Provider.Name, acct.Provider, acct.Provider.RootCAs)
		return graphmail.New(graphmail.NewClient(acct.Provider.GraphURL, hc, acct.Name, src), acct.Mailbox, graphmail.Options{})
	})
}

// close stops the Graph-served sessions, closes the UID map and writes
// the measured sizes.
func (g *graphIMAP) close() error {
	err := errors.Join(g.srv.Close(), g.mailboxes.Sizes.Close())
	if u := g.srv.UIDs(); u != nil {
		if cerr := u.Close(); err == nil {
			err = cerr
		}
	}
	g.clients.CloseIdleConnections()
	return err
}

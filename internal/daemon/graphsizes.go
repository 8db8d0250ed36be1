package daemon

import (
	"log/slog"

	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// GraphSizesKeyPurpose names the key, derived from the token store's key,
// that encrypts the measured sizes of Graph-served messages
// (graphmail.SizeFileName in state_dir).
const GraphSizesKeyPurpose = "graph message sizes"

// newGraphSizes returns the store that keeps the measured MIME sizes of
// Graph-served messages across restarts, for POP3 and IMAP alike. It reads
// its file at the first Graph-served login and is written by
// graphIMAP.close at shutdown.
func newGraphSizes(stateDir string, m *tokens.Manager, log *slog.Logger) *graphmail.SizeStore {
	return graphmail.NewSizeStore(graphmail.SizeStoreOptions{
		Dir:    stateDir,
		Key:    func() ([]byte, error) { return m.DerivedKey(GraphSizesKeyPurpose) },
		Logger: log.With("component", "graph-sizes"),
	})
}

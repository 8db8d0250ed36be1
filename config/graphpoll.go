package config

import (
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Polling of IMAP sessions served from Microsoft Graph (read_via =
// "graph"): Graph's change notifications need a public web address, so an
// IDLE session asks Graph for the folder's changes (messages/delta) at
// this interval.
const (
	DefaultIMAPGraphPoll = 30 * time.Second
	MinIMAPGraphPoll     = time.Second
)

// checkGraphPoll parses imap { graph_poll_interval }.
func checkGraphPoll(diags *hcl.Diagnostics, im *imapSchema) {
	im.GraphPoll = parseDuration(im.GraphPollInterval, DefaultIMAPGraphPoll, im.GraphPollIntervalRange, im.DefRange, "graph_poll_interval", diags)
	if im.GraphPoll < MinIMAPGraphPoll {
		*diags = append(*diags, diagAt(im.GraphPollIntervalRange, im.DefRange, "graph_poll_interval too short",
			fmt.Sprintf("graph_poll_interval %s would query Microsoft Graph more than once a second per IDLE session; Graph throttles at 10,000 requests per 10 minutes per mailbox. Use at least \"1s\" (default \"30s\").", im.GraphPoll)))
	}
}

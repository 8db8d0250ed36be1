package config

import (
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// checkReadVia validates and defaults read_via, pop3_folder and
// pop3_delete of an account.
func checkReadVia(diags *hcl.Diagnostics, a *Account) {
	switch a.ReadVia {
	case "":
		a.ReadVia = ReadViaIMAP
	case ReadViaIMAP, ReadViaGraph:
	default:
		*diags = append(*diags, diagAt(a.ReadViaRange, a.DefRange, "Invalid read_via",
			fmt.Sprintf(`account %q: read_via must be "imap" (IMAP and POP3 logins are passed to Exchange, the default) or "graph" (the bridge serves them from Microsoft Graph, for tenants with IMAP and POP turned off).`, a.Name)))
	}
	a.POP3Folder = strings.Trim(strings.TrimSpace(a.POP3Folder), "/")
	if a.POP3Folder == "" {
		a.POP3Folder = DefaultPOP3Folder
	}
	switch a.POP3Delete {
	case "":
		a.POP3Delete = POP3DeleteMove
	case POP3DeleteMove, POP3DeleteDelete:
	default:
		*diags = append(*diags, diagAt(a.POP3DelRange, a.DefRange, "Invalid pop3_delete",
			fmt.Sprintf(`account %q: pop3_delete must be "move" (a message deleted by a POP3 client goes to Deleted Items, the default) or "delete" (it is deleted, recoverable from Recoverable Items for the retention period).`, a.Name)))
	}
}

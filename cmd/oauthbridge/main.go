// Command oauthbridge lets legacy software that only speaks password IMAP,
// POP3 and SMTP use Microsoft 365 mailboxes, which require OAuth 2.0.
// See README.md; run `oauthbridge -h` for the subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/oauthbridge/oauthbridge/internal/cli"
)

func main() {
	// serve handles its own signals (SIGHUP reload, second SIGTERM); for the
	// other commands an interrupt cancels the context.
	ctx := context.Background()
	if len(os.Args) < 2 || os.Args[1] != "serve" {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
	}
	os.Exit(cli.Run(ctx, os.Args[1:], cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}))
}

// Command storewriter is a helper of the reliability suite. It opens the
// token store of a configuration with tokens.NewManager and forces token
// refreshes - and with them store writes - in a loop until it is killed.
// After each refresh it prints the first 16 hex digits of the SHA-256 of
// the access token it got (never the token itself).
//
//	storewriter CONFIG ACCOUNT
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: storewriter CONFIG ACCOUNT")
		os.Exit(2)
	}
	cfg, err := config.Load(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "storewriter:", err)
		os.Exit(1)
	}
	m, err := tokens.NewManager(cfg, tokens.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "storewriter:", err)
		os.Exit(1)
	}
	acct := os.Args[2]
	for {
		tok, err := m.AccessToken(context.Background(), acct)
		if err != nil {
			fmt.Fprintln(os.Stderr, "storewriter:", err)
			os.Exit(1)
		}
		fmt.Printf("%x\n", sha256.Sum256([]byte(tok)))
		m.Rejected(acct, tok) // the next AccessToken refreshes and writes the store
	}
}

package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// DefaultBcryptCost is the cost of hashes made by hash-password. 12 takes
// about 0.25 s per check on a current core; the credential cache makes that
// a once-per-TTL cost for a polling helpdesk.
const DefaultBcryptCost = 12

func runHashPassword(_ context.Context, env Env, args []string) error {
	fs := newFlags(env, "hash-password", "", `
Reads a password and prints its bcrypt hash, for the password_hash of a
user block (what a legacy client logs in with) or of the admin block. On a
terminal it asks twice without echo; otherwise it reads one line from
standard input: printf '%s\n' "$PW" | oauthbridge hash-password`)
	cost := fs.Int("cost", DefaultBcryptCost, "bcrypt cost (10-16)")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("hash-password takes no arguments (it reads the password from the terminal or standard input)")
	}
	if *cost < 10 || *cost > 16 {
		return usagef("-cost must be between 10 and 16")
	}
	var pw string
	if f, ok := stdinFile(env); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(env.Stderr, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(env.Stderr)
		if err != nil {
			return err
		}
		fmt.Fprint(env.Stderr, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(env.Stderr)
		if err != nil {
			return err
		}
		if string(a) != string(b) {
			return errors.New("the passwords do not match")
		}
		pw = string(a)
	} else {
		line, err := bufio.NewReader(env.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return errors.New("no password on standard input (pipe it in, e.g. printf '%s\\n' \"$PW\" | oauthbridge hash-password)")
		}
		pw = strings.TrimRight(line, "\r\n")
	}
	if pw == "" {
		return errors.New("refusing an empty password")
	}
	if len(pw) > 72 {
		return errors.New("bcrypt uses at most 72 bytes of a password; use a shorter one")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, string(h))
	return nil
}

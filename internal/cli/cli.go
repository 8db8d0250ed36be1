// Package cli implements the oauthbridge command line: one function per
// subcommand, dispatched with plain flag.FlagSets. cmd/oauthbridge only
// calls Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/daemon"
	"github.com/oauthbridge/oauthbridge/internal/logging"
)

// Exit codes: 2 for usage and configuration errors (systemd's
// RestartPreventExitStatus=2 stops restart loops on a broken config), 1 for
// anything else.
const (
	ExitOK     = 0
	ExitError  = 1
	ExitConfig = 2
)

// DefaultConfigPath is where serve, check, login and status look by default.
const DefaultConfigPath = "/etc/oauthbridge/config.hcl"

// Env is the process environment a command runs in; tests substitute it.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// usageError marks a usage or configuration error (exit code 2).
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env Env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"serve", "run the bridge (under systemd: Type=notify, SIGHUP reloads)", runServe},
		{"check", "validate a configuration file and exit", runCheck},
		{"hash-password", "read a password (no echo) and print its bcrypt hash for a user block", runHashPassword},
		{"login", "sign in a delegated account (device code; -browser for the browser flow)", runLogin},
		{"status", "show every account's token state", runStatus},
		{"consent-url", "print the admin-consent URL of a provider", runConsentURL},
		{"demo", "run a bridge against an embedded fake Microsoft 365, on loopback", runDemo},
		{"version", "print the version", runVersion},
	}
}

// Run runs the command line args (without the program name) and returns the
// process exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.Stderr)
		if len(args) == 0 {
			return ExitConfig
		}
		return ExitOK
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, env, args[1:])
		switch {
		case err == nil:
			return ExitOK
		case errors.Is(err, flag.ErrHelp):
			return ExitOK
		}
		var ce *config.Error
		if errors.As(err, &ce) {
			ce.WriteTo(env.Stderr)
			fmt.Fprintf(env.Stderr, "oauthbridge %s: configuration is invalid (%d problem(s))\n", c.name, len(ce.Diags))
			return ExitConfig
		}
		fmt.Fprintf(env.Stderr, "oauthbridge %s: %v\n", c.name, err)
		var ue usageError
		if errors.As(err, &ue) {
			return ExitConfig
		}
		return ExitError
	}
	fmt.Fprintf(env.Stderr, "oauthbridge: unknown command %q\n\n", args[0])
	usage(env.Stderr)
	return ExitConfig
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: oauthbridge COMMAND [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'oauthbridge COMMAND -h' for a command's flags.")
}

func newFlags(env Env, name, argsUsage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: oauthbridge %s [flags] %s\n", name, argsUsage)
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	return nil
}

func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", DefaultConfigPath, "configuration file")
}

func runVersion(_ context.Context, env Env, args []string) error {
	fmt.Fprintln(env.Stdout, "oauthbridge", version())
	return nil
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				if v == "" || v == "(devel)" {
					v = "devel"
				}
				v += "+" + s.Value[:12]
			}
		}
		if v != "" {
			return v
		}
	}
	return "devel"
}

func runCheck(_ context.Context, env Env, args []string) error {
	fs := newFlags(env, "check", "")
	path := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	var names []string
	for n := range cfg.AccountByName {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(env.Stdout, "%s: OK (%d provider(s), %d account(s): %s; %d user(s))\n", *path, len(cfg.Providers), len(cfg.Accounts), strings.Join(names, ", "), len(cfg.Users))
	return nil
}

func runServe(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "serve", "")
	path := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	log := logging.New(env.Stderr, cfg.LogFormat, cfg.LogLevel)
	daemon.Version = version()
	d, err := daemon.New(cfg, daemon.Options{Logger: log})
	if err != nil {
		return err
	}
	log.Info("starting oauthbridge", "version", daemon.Version, "config", *path)
	return daemon.Run(ctx, d, func() (*config.Config, error) { return config.Load(*path) })
}

// stdinFile returns env.Stdin as an *os.File when it is one (for terminal
// detection).
func stdinFile(env Env) (*os.File, bool) {
	f, ok := env.Stdin.(*os.File)
	return f, ok
}

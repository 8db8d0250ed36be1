// Package cli implements the oauthbridge command line: one function per
// subcommand, each with a plain flag.FlagSet whose flags may come before,
// between or after its arguments. cmd/oauthbridge only calls Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/daemon"
	"github.com/oauthbridge/oauthbridge/internal/logging"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Exit codes: 2 for usage and configuration errors (systemd's
// RestartPreventExitStatus=2 stops restart loops on a broken config), 1 for
// anything else. status adds 1 for "some account is not ok" and 3 for "no
// daemon answers" (ExitStatusNotOK, ExitUnavailable), so that it works as a
// monitoring check.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitConfig      = 2
	ExitStatusNotOK = 1
	ExitUnavailable = 3
)

// DefaultConfigPath is where every command that reads the configuration
// looks by default.
const DefaultConfigPath = "/etc/oauthbridge/config.hcl"

// AdminPasswordEnv is the environment variable status and login read the
// admin password from when the admin block has a password_hash.
const AdminPasswordEnv = "OAUTHBRIDGE_ADMIN_PASSWORD"

// buildVersion is stamped at link time by release builds:
//
//	go build -ldflags "-X github.com/oauthbridge/oauthbridge/internal/cli.buildVersion=1.2.3"
//
// When empty, version() falls back to the module's build information.
var buildVersion string

// Env is the process environment a command runs in; tests substitute it.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// usageError marks a usage or configuration error (exit code 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// exitError carries a command's own exit code (status's 1 and 3).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env Env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"serve", "run the bridge (under systemd: Type=notify, SIGHUP reloads)", runServe},
		{"check", "validate a configuration file the way serve reads it, and exit", runCheck},
		{"hash-password", "read a password (no echo) and print its bcrypt hash for a user or admin block", runHashPassword},
		{"login", "sign in a delegated account (Microsoft 365: device code, or -browser; Google: the browser)", runLogin},
		{"status", "show every account's token state; exit 0 only when all are ok", runStatus},
		{"consent-url", "print the admin-consent URL of a provider", runConsentURL},
		{"doctor", "check an account against Microsoft 365 and print the fix of each problem", runDoctor},
		{"cert", "make a key and self-signed certificate for an app registration (cert new)", runCert},
		{"demo", "run a bridge against an embedded fake Microsoft 365, on loopback", runDemo},
		{"version", "print the version (also: oauthbridge --version)", runVersion},
		{"help", "print this help, or a command's (oauthbridge help COMMAND)", nil},
	}
}

// Run runs the command line args (without the program name) and returns the
// process exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 {
		usage(env.Stderr, false)
		return ExitConfig
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(env.Stdout, true)
		return ExitOK
	case "help":
		if len(args) == 1 || args[1] == "help" {
			usage(env.Stdout, true)
			return ExitOK
		}
		args = []string{args[1], "-h"}
	case "-version", "--version":
		args = []string{"version"}
	}
	for _, c := range commands {
		if c.name != args[0] || c.run == nil {
			continue
		}
		err := c.run(ctx, env, args[1:])
		if err == nil || errors.Is(err, flag.ErrHelp) {
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
			fmt.Fprintf(env.Stderr, "Run 'oauthbridge %s -h' for its usage.\n", c.name)
			return ExitConfig
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return ExitError
	}
	if strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(env.Stderr, "oauthbridge: unknown flag %q: flags go after the command, e.g. oauthbridge status -config %s\n\n", args[0], DefaultConfigPath)
	} else {
		fmt.Fprintf(env.Stderr, "oauthbridge: unknown command %q\n\n", args[0])
	}
	usage(env.Stderr, false)
	return ExitConfig
}

// usage prints the overview; full adds every command's own help, so that
// `oauthbridge --help` is the complete reference.
func usage(w io.Writer, full bool) {
	fmt.Fprintln(w, "Usage: oauthbridge COMMAND [ARGUMENTS] [FLAGS]\n\noauthbridge lets password IMAP/POP3/SMTP clients use Microsoft 365 mailboxes through OAuth 2.0.\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Flags go after the command, before or after its arguments:
  oauthbridge login helpdesk -config /etc/oauthbridge/config.hcl
Also: oauthbridge -h | --help | help [COMMAND], oauthbridge --version | -version.

Exit codes:
  0  success
  1  failure (status: some account is not ok)
  2  usage or configuration error (the service's RestartPreventExitStatus=2)
  3  status only: no daemon answers on the admin address, or the admin API failed

Files and environment:
  /etc/oauthbridge/config.hcl   default -config of every command
  /etc/oauthbridge/credentials  default -credentials: where credential("name") reads when
                                $CREDENTIALS_DIRECTORY is unset; the unit passes each file to
                                the service with LoadCredential=name:/etc/oauthbridge/credentials/name
  CREDENTIALS_DIRECTORY         set by systemd for the service; credential("name") reads there
  STATE_DIRECTORY               set by systemd (StateDirectory=); the state_dir default
  OAUTHBRIDGE_ADMIN_PASSWORD    the admin password status and login send to the running daemon's
                                admin API when the admin block has a password_hash (otherwise
                                they ask on a terminal); not needed without a password_hash
`)
	if !full {
		fmt.Fprintln(w, "\nRun 'oauthbridge --help' for every command's flags, 'oauthbridge help COMMAND' for one.")
		return
	}
	for _, c := range commands {
		if c.run == nil {
			continue
		}
		fmt.Fprintf(w, "\n%s\n", strings.Repeat("-", 72))
		var discard strings.Builder
		c.run(context.Background(), Env{Stdin: strings.NewReader(""), Stdout: w, Stderr: &discard}, []string{"-h"})
	}
}

// cmdFlags is one command's flag set and help text.
type cmdFlags struct {
	*flag.FlagSet
	env       Env
	name      string
	argsUsage string
	about     string
	exitCodes string
}

// newFlags returns the flag set of a command. about is its description;
// help (-h, --help) prints it with the flags to standard output.
func newFlags(env Env, name, argsUsage, about string) *cmdFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned and printed once by Run
	fs.Usage = func() {}
	return &cmdFlags{FlagSet: fs, env: env, name: name, argsUsage: argsUsage, about: about,
		exitCodes: "Exit codes: 0 success, 1 failure, 2 usage or configuration error."}
}

func (c *cmdFlags) writeHelp(w io.Writer) {
	line := "oauthbridge " + c.name
	if c.argsUsage != "" {
		line += " " + c.argsUsage
	}
	hasFlags := false
	c.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		line += " [flags]"
	}
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", line, strings.TrimSpace(c.about))
	if hasFlags {
		fmt.Fprintln(w, "\nFlags (before or after the arguments; -flag and --flag are the same):")
		c.SetOutput(w)
		c.PrintDefaults()
		c.SetOutput(io.Discard)
	}
	fmt.Fprintf(w, "\n%s\n", c.exitCodes)
}

// parse parses args, which may mix flags and positional arguments
// ("login helpdesk -config X" and "login -config X helpdesk" are the same;
// after "--" everything is an argument), and returns the positional
// arguments. -h/--help prints the command's help to standard output and
// returns flag.ErrHelp.
func (c *cmdFlags) parse(args []string) ([]string, error) {
	pos, err := parseInterleaved(c.FlagSet, args)
	if errors.Is(err, flag.ErrHelp) {
		c.writeHelp(c.env.Stdout)
		return nil, err
	}
	if err != nil {
		return nil, usageError{err}
	}
	return pos, nil
}

// parseInterleaved runs fs.Parse repeatedly: the standard flag package stops
// at the first non-flag argument, so each stop moves one positional
// argument aside and parsing resumes after it. A "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// configFlags are the -config and -credentials flags of every command that
// reads the configuration.
type configFlags struct {
	path, credDir *string
}

func addConfigFlags(fs *cmdFlags) configFlags {
	return configFlags{
		path: fs.String("config", DefaultConfigPath, "configuration file"),
		credDir: fs.String("credentials", "", "directory credential(\"name\") reads from (default: $CREDENTIALS_DIRECTORY when set,\n"+
			"as under the service; else "+config.DefaultCredentialsDir+", the files the unit's\n"+
			"LoadCredential=name:"+config.DefaultCredentialsDir+"/name lines pass to the service)"),
	}
}

// load reads the configuration. With deferSecrets, secrets that cannot be
// read (the daemon's admin API needs none) stay unresolved; the caller asks
// cfg.SecretsError() before it needs them.
func (f configFlags) load(deferSecrets bool) (*config.Config, error) {
	return config.LoadWith(*f.path, config.Options{CredentialsDir: *f.credDir, DeferSecrets: deferSecrets})
}

// tokenOptions are the token manager's options for a command: the store key
// is the token-store-key credential when the credentials directory has one,
// as it is for the service (LoadCredential=token-store-key:...).
func tokenOptions(cfg *config.Config) tokens.Options {
	o := tokens.Options{Logger: logging.Discard}
	if cfg.CredentialsDir != "" {
		p := filepath.Join(cfg.CredentialsDir, tokens.CredentialKeyName)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			o.KeyFile = p
		}
	}
	return o
}

func runVersion(_ context.Context, env Env, args []string) error {
	fs := newFlags(env, "version", "", "Prints the version: the one stamped into a release build, else the module version and VCS revision.")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("version takes no arguments")
	}
	fmt.Fprintln(env.Stdout, "oauthbridge", version())
	return nil
}

func version() string {
	if buildVersion != "" {
		return buildVersion
	}
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
		if v != "" && v != "(devel)" {
			return v
		}
	}
	return "devel"
}

func runCheck(_ context.Context, env Env, args []string) error {
	fs := newFlags(env, "check", "", `
Reads and validates the configuration exactly as serve does (the same checks,
the same secrets: env(), file(), credential()), prints OK and a summary, or
every problem with its file, line and source line. Warnings (an account no
user maps to) are printed but do not fail the check. Run it before
'systemctl reload oauthbridge'; from a root shell, credential("name") reads
/etc/oauthbridge/credentials/name, the file the unit passes to the service.`)
	cf := addConfigFlags(fs)
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("check takes no arguments (the file is given with -config)")
	}
	cfg, err := cf.load(false)
	if err != nil {
		return err
	}
	if w := cfg.WarningsError(); w != nil {
		w.WriteTo(env.Stderr)
	}
	var names []string
	for n := range cfg.AccountByName {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(env.Stdout, "%s: OK (%d provider(s), %d account(s): %s; %d user(s))\n", *cf.path, len(cfg.Providers), len(cfg.Accounts), strings.Join(names, ", "), len(cfg.Users))
	writeCheckCertificates(env.Stdout, cfg) // credentials.go
	return nil
}

func runServe(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "serve", "", `
Runs the bridge in the foreground: binds every listener (a bind error stops
it), keeps the tokens refreshed, logs to standard error. Under systemd
(Type=notify) it reports readiness; SIGHUP reloads the configuration (users,
passwords, accounts, certificates; an invalid one is refused and the old one
keeps serving); SIGTERM drains sessions for shutdown_timeout, a second
SIGTERM exits at once.`)
	cf := addConfigFlags(fs)
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("serve takes no arguments (the file is given with -config)")
	}
	cfg, err := cf.load(false)
	if err != nil {
		return err
	}
	log := logging.New(env.Stderr, cfg.LogFormat, cfg.LogLevel)
	daemon.Version = version()
	d, err := daemon.New(cfg, daemon.Options{Logger: log, TokenOptions: tokens.Options{KeyFile: tokenOptions(cfg).KeyFile}})
	if err != nil {
		return err
	}
	log.Info("starting oauthbridge", "version", daemon.Version, "config", *cf.path)
	return daemon.Run(ctx, d, func() (*config.Config, error) { return cf.load(false) })
}

// stdinFile returns env.Stdin as an *os.File when it is one (for terminal
// detection).
func stdinFile(env Env) (*os.File, bool) {
	f, ok := env.Stdin.(*os.File)
	return f, ok
}

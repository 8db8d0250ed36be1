package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/doctor"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// DoctorAPITimeout bounds POST /api/doctor: the daemon stops its checks
// after admin.DefaultDoctorTimeout (50 s).
const DoctorAPITimeout = 70 * time.Second

func runDoctor(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "doctor", "[ACCOUNT]", `
Runs every check an account needs against Microsoft 365, in order, and
goes on after a failure: the configuration; the identity platform (DNS,
TLS, this host's clock against its Date header); a token for each resource
the account uses (Exchange Online; Microsoft Graph with send_via = "graph"
or "auto"); IMAP login and EXAMINE INBOX; POP3 login and STAT; SMTP AUTH
(nothing is sent) or, when sending through Graph, a read of the mailbox's
Drafts folder through Graph; MAIL FROM then RSET for each send_as address;
and the configured connection caps against Exchange's per-mailbox limits.
Each failure says what it means and the fix: the Exchange Online
PowerShell line, the portal path or the admin-consent URL, with the
account's names filled in. Without ACCOUNT, every account is checked.

When the daemon runs (its admin API answers on admin.listen), the checks
run inside it with its tokens, so doctor never refreshes a token behind
its back; with an admin password_hash, set OAUTHBRIDGE_ADMIN_PASSWORD.
When no daemon answers, doctor reads the configuration and the token store
itself (it then needs the configuration's secrets, e.g. credential("name")
from -credentials).`)
	cf := addConfigFlags(fs)
	asJSON := fs.Bool("json", false, "print the report as JSON (the admin API's POST /api/doctor; see README)")
	fs.exitCodes = `Exit codes:
  0  every check passed (or was skipped as not applicable)
  1  some check failed, or the daemon's admin API failed
  2  usage or configuration error (e.g. no such account)`
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("doctor takes at most one ACCOUNT, got %d arguments", len(pos))
	}
	var names []string
	if len(pos) == 1 {
		if _, _, err := loadAccount(cf, pos[0]); err != nil {
			return err
		}
		names = pos
	}
	cfg, err := cf.load(true)
	if err != nil {
		return err
	}

	var rep *doctor.Report
	ac := newAdminClient(cfg, env)
	ac.hc = &http.Client{Timeout: DoctorAPITimeout}
	path := "/api/doctor"
	if len(names) == 1 {
		path += "?account=" + url.QueryEscape(names[0])
	}
	var remote doctor.Report
	err = ac.do(ctx, http.MethodPost, path, &remote)
	switch {
	case err == nil:
		rep = &remote
	case errors.Is(err, errNoDaemon):
		fmt.Fprintf(env.Stderr, "No daemon answers on %s; checking with the token store in %s.\n", cfg.Admin.Listen, cfg.StateDir)
		if rep, err = localDoctor(ctx, cfg, names); err != nil {
			return err
		}
	default:
		return fmt.Errorf("the running daemon could not run the checks: %w", err)
	}

	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		doctor.WriteTable(env.Stdout, rep)
	}
	if !rep.OK {
		failed := 0
		for _, a := range rep.Accounts {
			for _, c := range a.Checks {
				if c.Status == doctor.Fail {
					failed++
				}
			}
		}
		return &exitError{ExitError, fmt.Errorf("%d check(s) failed; the fix is printed under each", failed)}
	}
	return nil
}

// localDoctor runs the checks in this process with the token store. It
// creates nothing in state_dir: without a store file (nobody has signed in
// yet) it works on an empty store in a temporary directory, so delegated
// accounts report the sign-in they need and app-flow accounts still get
// their token.
func localDoctor(ctx context.Context, cfg *config.Config, names []string) (*doctor.Report, error) {
	opts := doctor.Options{Source: "local", SecretsError: cfg.SecretsError()}
	if opts.SecretsError == nil {
		mcfg := cfg
		if !cfg.Store.Shared() {
			if _, err := os.Stat(filepath.Join(cfg.StateDir, tokens.StoreFileName)); errors.Is(err, fs.ErrNotExist) {
				tmp, err := os.MkdirTemp("", "oauthbridge-doctor-")
				if err != nil {
					return nil, err
				}
				defer os.RemoveAll(tmp)
				c := *cfg
				c.StateDir = tmp
				mcfg = &c
			}
		}
		tokOpts := tokenOptions(cfg)
		if mcfg != cfg {
			tokOpts.KeyFile = "" // a throwaway key for the throwaway store
		}
		m, err := tokens.NewManager(mcfg, tokOpts)
		if err != nil {
			return nil, err
		}
		defer m.Close()
		opts.Tokens = m
	}
	return doctor.Run(ctx, cfg, names, opts), nil
}

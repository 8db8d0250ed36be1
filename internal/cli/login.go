package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/admin"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// Named timings of the login and status commands.
const (
	// AdminAPITimeout bounds one request to a running daemon's admin API.
	AdminAPITimeout = 10 * time.Second
	// DevicePollInterval is how often `login` asks the daemon whether the
	// device-code sign-in it started has finished.
	DevicePollInterval = 2 * time.Second
	// CallbackReadHeaderTimeout bounds the request header of the one-shot
	// OAuth redirect server of `login -browser` without a daemon.
	CallbackReadHeaderTimeout = 10 * time.Second
)

// adminClient talks to a running daemon's JSON API on the admin listener.
type adminClient struct {
	base     string
	user, pw string
	hc       *http.Client
}

func newAdminClient(cfg *config.Config, env Env) *adminClient {
	c := &adminClient{base: "http://" + cfg.Admin.Listen, hc: &http.Client{Timeout: AdminAPITimeout}}
	if cfg.Admin.PasswordHash != "" {
		c.user = cfg.Admin.Username
		c.pw = os.Getenv(AdminPasswordEnv)
		if c.pw == "" {
			if f, ok := stdinFile(env); ok && term.IsTerminal(int(f.Fd())) {
				fmt.Fprintf(env.Stderr, "Admin password for %s (or set %s): ", c.base, AdminPasswordEnv)
				b, _ := term.ReadPassword(int(f.Fd()))
				fmt.Fprintln(env.Stderr)
				c.pw = string(b)
			}
		}
	}
	return c
}

// errNoDaemon means nothing listens on the admin address: work on the store
// directly.
var errNoDaemon = errors.New("no running daemon")

func (c *adminClient) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return err
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.pw)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set(admin.APIRequestHeader, "oauthbridge-cli") // the API refuses POSTs without it (CSRF)
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return errNoDaemon
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return errNoDaemon
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The url.Error repeats the method and URL; say it once, plainly.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return &adminAPIError{fmt.Sprintf("the daemon's admin API at %s did not answer %s %s: %v", c.base, method, path, err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusUnauthorized {
		if c.user == "" {
			return &adminAPIError{fmt.Sprintf("the daemon's admin API at %s asks for a password, but the admin block of this configuration has no password_hash: is -config the file the service runs with?", c.base)}
		}
		how := "set " + AdminPasswordEnv
		if c.pw != "" {
			how = "check " + AdminPasswordEnv
		}
		return &adminAPIError{fmt.Sprintf("the daemon's admin API at %s refused the admin password of user %q (%s)", c.base, c.user, how)}
	}
	if resp.StatusCode/100 != 2 {
		// Every API error is {"error": "..."}; show the message, not the JSON.
		var ae struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(bytes.TrimSpace(body)))
		if json.Unmarshal(body, &ae) == nil && ae.Error != "" {
			msg = ae.Error
		} else if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || len(msg) > 300 {
			msg = "(no error message)"
		}
		return &adminAPIError{fmt.Sprintf("the daemon at %s answered %s to %s %s: %s", c.base, resp.Status, method, path, msg)}
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return &adminAPIError{fmt.Sprintf("the daemon at %s answered %s %s with something that is not oauthbridge's API (%v): is admin.listen another program's address?", c.base, method, path, err)}
		}
	}
	return nil
}

// adminAPIError is a failure to talk to a running daemon (other than "no
// daemon"): status exits 3 on it.
type adminAPIError struct{ msg string }

func (e *adminAPIError) Error() string { return e.msg }

func loadAccount(cf configFlags, name string) (*config.Config, *config.Account, error) {
	cfg, err := cf.load(true)
	if err != nil {
		return nil, nil, err
	}
	a := cfg.AccountByName[name]
	if a == nil {
		var names []string
		for n := range cfg.AccountByName {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, nil, usagef("no account %q in %s (accounts: %s)", name, *cf.path, strings.Join(names, ", "))
	}
	return cfg, a, nil
}

func runLogin(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "login", "ACCOUNT", `
Signs in a delegated account: prints a URL and a code; open the URL on any
device, enter the code and sign in as the account's delegate (or mailbox).
Someone else signing in is refused ("user mismatch") and nothing is stored.

When the daemon runs (its admin API answers on admin.listen), the sign-in
happens inside it and needs no secret here; with an admin password_hash,
set OAUTHBRIDGE_ADMIN_PASSWORD (or type it when asked on a terminal).
When no daemon answers, login writes the token store in state_dir itself
(it then needs the configuration's secrets, e.g. credential("name") from
-credentials) and the daemon picks the token up when it starts.
An app-flow (client credentials) account needs no sign-in.

A Google account (provider type = "google") always signs in with the
browser: Google's device flow does not cover Gmail's scope. The redirect
goes to admin.public_url + /oauth/callback on this host (loopback), so run
it where a browser can reach that address (or forward it with ssh -L).`)
	cf := addConfigFlags(fs)
	browser := fs.Bool("browser", false, "use the browser (authorization code + PKCE) flow instead of a device code")
	local := fs.Bool("local", false, "do not ask a running daemon; write the token store directly (the daemon picks it up)")
	device := fs.Bool("device", false, "use the device-code flow (the default, except for Google accounts)")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("login takes exactly one ACCOUNT, got %d argument(s)", len(pos))
	}
	cfg, acct, err := loadAccount(cf, pos[0])
	if err != nil {
		return err
	}
	if acct.Flow == config.FlowApp {
		fmt.Fprintf(env.Stdout, "Account %q uses the app flow (client credentials): there is nothing to sign in. 'oauthbridge status' shows whether its token works.\n", acct.Name)
		return nil
	}
	if acct.Provider.IsGoogle() {
		if *device {
			return usagef("account %q is a Google account: Google's device flow does not cover Gmail's scope %s, so it cannot sign in with a device code. Sign in with the browser instead: oauthbridge login -browser %s (or press Connect on the status page)", acct.Name, config.GoogleMailScope, acct.Name)
		}
		*browser = true
	}
	if *browser && *device {
		return usagef("-browser and -device exclude each other")
	}
	if *browser {
		return browserLogin(ctx, env, cfg, acct, *local)
	}
	if !*local {
		ac := newAdminClient(cfg, env)
		var dl tokens.DeviceLogin
		err := ac.do(ctx, http.MethodPost, "/api/accounts/"+url.PathEscape(acct.Name)+"/device-login", &dl)
		if err == nil {
			return waitDaemonLogin(ctx, env, cfg, ac, acct, &dl)
		}
		if !errors.Is(err, errNoDaemon) {
			return fmt.Errorf("could not start the sign-in: %w", err)
		}
		fmt.Fprintf(env.Stderr, "No daemon answers on %s; signing in directly into the token store in %s.\n", cfg.Admin.Listen, cfg.StateDir)
	}
	if err := cfg.SecretsError(); err != nil {
		return err
	}
	m, err := tokens.NewManager(cfg, tokenOptions(cfg))
	if err != nil {
		return err
	}
	defer m.Close()
	dl, done, err := m.StartDeviceLogin(ctx, acct.Name)
	if err != nil {
		return err
	}
	printDevice(env, acct, dl)
	stop := countdown(env, dl.Expires)
	err = <-done
	stop()
	if err != nil {
		return err
	}
	reportSignedIn(env, acct, m.Status())
	return nil
}

func printDevice(env Env, acct *config.Account, dl *tokens.DeviceLogin) {
	fmt.Fprintf(env.Stdout, "To sign in account %q (mailbox %s), open\n\n    %s\n\nin any browser (it need not be on this server) and enter the code\n\n    %s\n\nSign in as %s.\n", acct.Name, acct.Mailbox, dl.VerificationURI, dl.UserCode, acct.LoginHint())
}

// countdown shows the time left for a device code: a live line on a
// terminal, a line a minute otherwise (ssh sessions, logs).
func countdown(env Env, expires time.Time) (stop func()) {
	done := make(chan struct{})
	isTTY := false
	if f, ok := env.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		isTTY = true
	}
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-done:
				if isTTY {
					fmt.Fprint(env.Stderr, "\r\033[K")
				}
				return
			case now := <-tick.C:
				left := time.Until(expires).Round(time.Second)
				if left < 0 {
					left = 0
				}
				if isTTY {
					fmt.Fprintf(env.Stderr, "\rWaiting for the sign-in... the code expires in %s \033[K", left)
				} else if now.Sub(last) >= time.Minute {
					fmt.Fprintf(env.Stderr, "Waiting for the sign-in... the code expires in %s\n", left)
					last = now
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}

func waitDaemonLogin(ctx context.Context, env Env, cfg *config.Config, ac *adminClient, acct *config.Account, dl *tokens.DeviceLogin) error {
	printDevice(env, acct, dl)
	stop := countdown(env, dl.Expires)
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(DevicePollInterval):
		}
		var st struct {
			Done  bool   `json:"done"`
			Error string `json:"error"`
		}
		if err := ac.do(ctx, http.MethodGet, "/api/accounts/"+url.PathEscape(acct.Name)+"/device-login", &st); err != nil {
			if errors.Is(err, errNoDaemon) {
				return fmt.Errorf("the daemon at %s stopped during the sign-in; run the login again", cfg.Admin.Listen)
			}
			return fmt.Errorf("waiting for the sign-in: %w", err)
		}
		if !st.Done {
			continue
		}
		stop()
		if st.Error != "" {
			return errors.New(st.Error)
		}
		var rows []tokens.AccountStatus
		if err := ac.do(ctx, http.MethodGet, "/api/accounts", &rows); err == nil {
			reportSignedIn(env, acct, rows)
		} else {
			fmt.Fprintf(env.Stdout, "Signed in; account %q is ready.\n", acct.Name)
		}
		return nil
	}
}

func reportSignedIn(env Env, acct *config.Account, rows []tokens.AccountStatus) {
	for _, r := range rows {
		if r.Account == acct.Name {
			fmt.Fprintf(env.Stdout, "Signed in as %s; account %q (mailbox %s) is %s, access token valid until %s.\n",
				r.SignedInAs, acct.Name, acct.Mailbox, r.State, r.Expiry.Local().Format(time.DateTime))
			return
		}
	}
	fmt.Fprintf(env.Stdout, "Signed in; account %q is ready.\n", acct.Name)
}

// browserLogin runs the authorization-code flow. With a daemon running, the
// redirect lands on its admin listener, so the person uses the status page's
// Connect button. Without one, this command serves /oauth/callback on the
// admin listen address itself until the sign-in completes.
func browserLogin(ctx context.Context, env Env, cfg *config.Config, acct *config.Account, local bool) error {
	if !local {
		ac := newAdminClient(cfg, env)
		err := ac.do(ctx, http.MethodGet, "/api/accounts/"+url.PathEscape(acct.Name), nil)
		if err == nil {
			fmt.Fprintf(env.Stdout, "The daemon is running: open %s/ in a browser and press Connect (or Re-authenticate) for account %q, then sign in as %s.\n", cfg.Admin.PublicURL, acct.Name, acct.LoginHint())
			return nil
		}
		if !errors.Is(err, errNoDaemon) {
			return err
		}
	}
	if err := cfg.SecretsError(); err != nil {
		return err
	}
	m, err := tokens.NewManager(cfg, tokenOptions(cfg))
	if err != nil {
		return err
	}
	defer m.Close()
	redirect := cfg.Admin.PublicURL + "/oauth/callback"
	u, err := m.BrowserLoginURL(acct.Name, redirect)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("listening on the admin address %s for the OAuth redirect: %w", cfg.Admin.Listen, err)
	}
	result := make(chan error, 1)
	srv := &http.Server{ReadHeaderTimeout: CallbackReadHeaderTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/oauth/callback" {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		var err error
		if e := q.Get("error"); e != "" {
			err = fmt.Errorf("sign-in failed: %s: %s", e, q.Get("error_description"))
		} else {
			_, err = m.CompleteBrowserLogin(r.Context(), q.Get("state"), q.Get("code"))
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "oauthbridge: %v\n", err)
		} else {
			fmt.Fprintf(w, "oauthbridge: account %s is signed in. You can close this window.\n", acct.Name)
		}
		select {
		case result <- err:
		default:
		}
	})}
	go srv.Serve(ln)
	defer func() {
		// Shutdown, not Close: the browser must still get the page that
		// says the sign-in worked.
		sctx, cancel := context.WithTimeout(context.Background(), CallbackReadHeaderTimeout)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	fmt.Fprintf(env.Stdout, "Open this URL in a browser and sign in as %s:\n\n    %s\n\nThe redirect returns to %s (serving it on %s until done).\n", acct.LoginHint(), u, redirect, cfg.Admin.Listen)
	select {
	case err := <-result:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	reportSignedIn(env, acct, m.Status())
	return nil
}

func runStatus(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "status", "", `
Shows every account's token state (ok, needs_login, failing, unknown), the
access token's expiry, the last refresh and the last error with its fix.

It asks the running daemon's admin API (admin.listen), which needs no
secret here; with an admin password_hash, set OAUTHBRIDGE_ADMIN_PASSWORD
(or type it when asked on a terminal). When no daemon answers, it shows the
token store in state_dir instead, and exits 3.

For monitoring (Nagios, cron): exit 0 only when every account is ok,
including its Microsoft Graph token where send_via or read_via uses Graph.`)
	cf := addConfigFlags(fs)
	asJSON := fs.Bool("json", false, "print the accounts as JSON (the admin API's /api/accounts)")
	fs.exitCodes = `Exit codes:
  0  every account is ok
  1  some account is not ok (needs_login, failing, or unknown: an app-flow account not tried yet),
     or has a Microsoft Graph token error while its send_via or read_via uses Graph
  2  usage or configuration error
  3  no daemon answers on admin.listen (the table then shows the token store), or its admin API failed`
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("status takes no arguments")
	}
	cfg, err := cf.load(true)
	if err != nil {
		return err
	}
	var rows []tokens.AccountStatus
	source := "daemon at " + cfg.Admin.Listen
	cl := newAdminClient(cfg, env)
	err = cl.do(ctx, http.MethodGet, "/api/accounts", &rows)
	daemonDown := errors.Is(err, errNoDaemon)
	if daemonDown {
		source = "token store in " + cfg.StateDir + " (no daemon answers on " + cfg.Admin.Listen + ")"
		if rows, err = storeStatus(cfg); err != nil {
			return &exitError{ExitUnavailable, fmt.Errorf("no daemon answers on %s, and the token store cannot be read: %w", cfg.Admin.Listen, err)}
		}
	} else if err != nil {
		return &exitError{ExitUnavailable, err}
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(env.Stdout, "Source: %s\n\n", source)
		writeStatusTable(env.Stdout, rows, time.Now())
		creds, fromDaemon := statusCredentials(ctx, cl, cfg, !daemonDown) // credentials.go
		writeCredentialTable(env.Stdout, creds, fromDaemon, time.Now())
		writeSecretExpiry(env.Stdout, cfg, rows, time.Now()) // secretexpiry.go
	}
	if daemonDown {
		return &exitError{ExitUnavailable, fmt.Errorf("no daemon answers on %s: the bridge is not running (systemctl status oauthbridge); the states shown are the token store's", cfg.Admin.Listen)}
	}
	var bad []string
	for _, r := range rows {
		switch {
		case r.State != tokens.StateOK:
			bad = append(bad, fmt.Sprintf("%s is %s", r.Account, r.State))
		case r.GraphError != "":
			// Set only for an account whose settings use Graph (send_via
			// graph or auto, read_via graph): its mail through Graph fails.
			bad = append(bad, fmt.Sprintf("%s has a Microsoft Graph token error", r.Account))
		}
	}
	if len(bad) > 0 {
		return &exitError{ExitStatusNotOK, fmt.Errorf("%d of %d account(s) not ok: %s", len(bad), len(rows), strings.Join(bad, ", "))}
	}
	return nil
}

// storeStatus is status without a daemon: the token store's view. It
// creates nothing: without a store file (nobody signed in yet) every
// delegated account needs a login and app-flow accounts are not tried yet.
func storeStatus(cfg *config.Config) ([]tokens.AccountStatus, error) {
	if _, err := os.Stat(filepath.Join(cfg.StateDir, tokens.StoreFileName)); errors.Is(err, fs.ErrNotExist) {
		var rows []tokens.AccountStatus
		for _, a := range cfg.Accounts {
			r := tokens.AccountStatus{Account: a.Name, Mailbox: a.Mailbox, Flow: a.Flow, Delegate: a.Delegate, State: tokens.StateNeedsLogin,
				LastError: "nobody has signed in for this account yet",
				Fix:       fmt.Sprintf("run 'oauthbridge login %s' and sign in as %s", a.Name, a.LoginHint())}
			if a.Flow == config.FlowApp {
				r.State, r.LastError, r.Fix = tokens.StateUnknown, "no token requested yet", "start the service; it requests the token itself"
			}
			if a.Provider != nil {
				r.ClientSecretExpires = a.Provider.SecretExpires
			}
			rows = append(rows, r)
		}
		sort.Slice(rows, func(i, j int) bool { return rows[i].Account < rows[j].Account })
		return rows, nil
	}
	m, err := tokens.NewManager(cfg, tokenOptions(cfg))
	if err != nil {
		return nil, err
	}
	defer m.Close()
	return m.Status(), nil
}

func writeStatusTable(w io.Writer, rows []tokens.AccountStatus, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tMAILBOX\tFLOW\tSTATE\tTOKEN EXPIRES\tLAST REFRESH\tLAST ERROR")
	for _, r := range rows {
		exp := "-"
		if !r.Expiry.IsZero() {
			exp = fmt.Sprintf("%s (in %s)", r.Expiry.Local().Format("01-02 15:04"), r.Expiry.Sub(now).Round(time.Minute))
			if r.Expiry.Before(now) {
				exp = r.Expiry.Local().Format("01-02 15:04") + " (expired)"
			}
		}
		last := "-"
		if !r.LastRefresh.IsZero() {
			last = r.LastRefresh.Local().Format("01-02 15:04")
		}
		lastErr := r.LastError
		if r.Fix != "" {
			lastErr += " -> " + r.Fix
		}
		if r.GraphError != "" {
			// Exchange may be fine while the Graph token is not (a consent
			// missing after send_via or read_via changed).
			g := "Microsoft Graph: " + r.GraphError
			if r.GraphFix != "" {
				g += " -> " + r.GraphFix
			}
			if lastErr != "" {
				lastErr += "; "
			}
			lastErr += g
		}
		if lastErr == "" {
			lastErr = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Account, r.Mailbox, r.Flow, r.State, exp, last, lastErr)
	}
	tw.Flush()
}

func runConsentURL(_ context.Context, env Env, args []string) error {
	fs := newFlags(env, "consent-url", "PROVIDER", `
Prints the URL a tenant administrator opens to grant the app registration of
provider PROVIDER (a provider block's label) admin consent for the whole
tenant. Needs no secret.`)
	cf := addConfigFlags(fs)
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("consent-url takes exactly one PROVIDER, got %d argument(s)", len(pos))
	}
	cfg, err := cf.load(true)
	if err != nil {
		return err
	}
	p := cfg.ProviderByName[pos[0]]
	if p == nil {
		var names []string
		for n := range cfg.ProviderByName {
			names = append(names, n)
		}
		sort.Strings(names)
		return usagef("no provider %q in %s (providers: %s)", pos[0], *cf.path, strings.Join(names, ", "))
	}
	if p.IsGoogle() {
		id := "the service account's client ID"
		if p.ServiceAccount != nil && p.ServiceAccount.ClientID != "" {
			id = "client ID " + p.ServiceAccount.ClientID + " (service account " + p.ServiceAccount.Email + ")"
		}
		fmt.Fprintf(env.Stdout, "Provider %s is a Google provider; Google has no admin-consent URL.\n\n"+
			"For flow = \"app\": a Workspace administrator opens https://admin.google.com/ac/owl/domainwidedelegation\n"+
			"(Security > Access and data control > API controls > Domain-wide delegation) and adds %s\nwith the scope %s.\n\n"+
			"For people who sign in: publish the OAuth consent screen of client %s (\"In production\"),\nor its refresh tokens expire after 7 days.\n",
			p.Name, id, config.GoogleMailScope, p.ClientID)
		return nil
	}
	fmt.Fprintf(env.Stdout, "A tenant administrator opens this URL to approve app %s for the whole tenant:\n\n    %s\n", p.ClientID, tokens.ConsentURL(p, cfg.Admin.PublicURL+"/oauth/callback"))
	return nil
}

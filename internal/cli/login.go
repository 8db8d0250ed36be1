package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/admin"
	"github.com/oauthbridge/oauthbridge/internal/logging"
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
		c.pw = os.Getenv("OAUTHBRIDGE_ADMIN_PASSWORD")
		if c.pw == "" {
			if f, ok := stdinFile(env); ok && term.IsTerminal(int(f.Fd())) {
				fmt.Fprintf(env.Stderr, "Admin password for %s (or set OAUTHBRIDGE_ADMIN_PASSWORD): ", c.base)
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
		return fmt.Errorf("admin API %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusUnauthorized {
		return errors.New("the daemon's admin API refused the admin password (set OAUTHBRIDGE_ADMIN_PASSWORD)")
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("admin API %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(bytes.TrimSpace(body))))
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

func loadAccount(path, name string) (*config.Config, *config.Account, error) {
	cfg, err := config.Load(path)
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
		return nil, nil, usagef("no account %q in %s (accounts: %s)", name, path, strings.Join(names, ", "))
	}
	return cfg, a, nil
}

func runLogin(ctx context.Context, env Env, args []string) error {
	fs := newFlags(env, "login", "ACCOUNT")
	path := configFlag(fs)
	browser := fs.Bool("browser", false, "use the browser (authorization code + PKCE) flow instead of a device code")
	local := fs.Bool("local", false, "do not ask a running daemon; write the token store directly (the daemon picks it up)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return usagef("login takes exactly one ACCOUNT")
	}
	cfg, acct, err := loadAccount(*path, fs.Arg(0))
	if err != nil {
		return err
	}
	if acct.Flow == config.FlowApp {
		fmt.Fprintf(env.Stdout, "Account %q uses the app flow (client credentials): there is nothing to sign in. 'oauthbridge status' shows whether its token works.\n", acct.Name)
		return nil
	}
	if *browser {
		return browserLogin(ctx, env, cfg, acct, *local)
	}
	if !*local {
		ac := newAdminClient(cfg, env)
		var dl tokens.DeviceLogin
		err := ac.do(ctx, http.MethodPost, "/api/accounts/"+url.PathEscape(acct.Name)+"/device-login", &dl)
		if err == nil {
			return waitDaemonLogin(ctx, env, ac, acct, &dl)
		}
		if !errors.Is(err, errNoDaemon) {
			return err
		}
		fmt.Fprintf(env.Stderr, "No daemon answers on %s; signing in directly into the token store in %s.\n", cfg.Admin.Listen, cfg.StateDir)
	}
	m, err := tokens.NewManager(cfg, tokens.Options{Logger: logging.Discard})
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

func waitDaemonLogin(ctx context.Context, env Env, ac *adminClient, acct *config.Account, dl *tokens.DeviceLogin) error {
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
			return err
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
	m, err := tokens.NewManager(cfg, tokens.Options{Logger: logging.Discard})
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
	defer srv.Close()
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
	fs := newFlags(env, "status", "")
	path := configFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	var rows []tokens.AccountStatus
	source := "daemon at " + cfg.Admin.Listen
	err = newAdminClient(cfg, env).do(ctx, http.MethodGet, "/api/accounts", &rows)
	if errors.Is(err, errNoDaemon) {
		source = "token store in " + cfg.StateDir + " (daemon not running)"
		m, err := tokens.NewManager(cfg, tokens.Options{Logger: logging.Discard})
		if err != nil {
			return err
		}
		rows = m.Status()
		m.Close()
	} else if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	fmt.Fprintf(env.Stdout, "Source: %s\n\n", source)
	writeStatusTable(env.Stdout, rows, time.Now())
	return nil
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
		if lastErr == "" {
			lastErr = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Account, r.Mailbox, r.Flow, r.State, exp, last, lastErr)
	}
	tw.Flush()
}

func runConsentURL(_ context.Context, env Env, args []string) error {
	fs := newFlags(env, "consent-url", "PROVIDER")
	path := configFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return usagef("consent-url takes exactly one PROVIDER")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	p := cfg.ProviderByName[fs.Arg(0)]
	if p == nil {
		return usagef("no provider %q in %s", fs.Arg(0), *path)
	}
	fmt.Fprintf(env.Stdout, "A tenant administrator opens this URL to approve app %s for the whole tenant:\n\n    %s\n", p.ClientID, tokens.ConsentURL(p, cfg.Admin.PublicURL+"/oauth/callback"))
	return nil
}

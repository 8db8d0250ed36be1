// Command fakeidp runs internal/fakems's identity platform for the real-peer
// suite (test/peers/run.sh) and adds the endpoints Dovecot and the suite's
// scripts need on one loopback address.
//
// Every path not listed below is passed to the fake unchanged, so the
// bridge's provider uses this server as its authority.
//
//	POST /dovecot/grant       Dovecot's oauth2 passdb with use_grant_password:
//	                          form username=<login name>&password=<access token>.
//	                          200 {"access_token","username","active":true} when the
//	                          token is live and its user is the mailbox itself or one
//	                          of the mailbox's delegates; 400 invalid_grant otherwise;
//	                          503 while the "grant" fault is set.
//	POST /dovecot/introspect  token=... -> the fake's /introspect answer.
//	POST /test/approve        code=&upn= approves a device code as upn.
//	POST /test/revoke         upn= revokes upn's refresh tokens.
//	POST /test/token          upn= mints an access token (direct checks).
//	POST /test/fault          grant=503|"" makes Dovecot's logins fail temporarily.
//	POST /test/graph-fault    status=&count=&retry_after=&code=&route= sets the fake
//	                          Graph endpoint's fault (status="" clears it; route
//	                          limits it to one route, e.g. getMIME).
//	POST /test/deliver        mailbox=&message= puts a message into the mailbox's
//	                          INBOX (the store the fake's IMAP, POP3 and Graph serve).
//	GET  /test/folder         ?mailbox=&folder= -> {"count": messages in the folder}.
//	GET  /test/refresh-stats  the refresh-token audit (refresh.go): refreshes per
//	                          sign-in, re-presented and stale refresh tokens.
//	POST /test/token-hold     ms=&count= holds the next count refresh answers.
//
// The fake's Microsoft Graph endpoint runs on its own HTTPS port:
// -graph-url-file receives its base URL and -ca-file the CA that signed it.
// Only Outlook tokens (not Graph ones) pass /dovecot/grant, as Exchange's
// IMAP refuses a token for another resource.
//
// With -env-file it also writes the fake's own upstream servers as shell
// variables (FAKE_IMAP, FAKE_POP3, FAKE_SMTP, FAKE_CA_FILE, the CA written
// beside it), for suites that use the fake's IMAP/POP3/SMTP instead of
// Dovecot and Postfix (test/install/run.sh).
//
// Dovecot's oauth2 passdb cannot express delegation: introspection never
// sees the login name, so /dovecot/grant does the check itself.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

// introspectTimeout bounds one call to the fake's introspection endpoint.
const introspectTimeout = 5 * time.Second

// outlookAudience is the resource of tokens Exchange's IMAP accepts.
const outlookAudience = "https://outlook.office.com"

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type idp struct {
	fake      *fakems.Fake
	log       *slog.Logger
	hc        *http.Client
	mu        sync.Mutex
	delegates map[string]map[string]bool // mailbox -> delegate UPNs
	appGrants map[string]map[string]bool // mailbox -> client IDs with app-only access
	grantCode int                        // non-zero: /dovecot/grant answers this status
}

func main() {
	var apps, users, mailboxes, grants, roles, sendAs listFlag
	listen := flag.String("listen", "127.0.0.1:0", "address for the combined HTTP server")
	urlFile := flag.String("url-file", "", "write the base URL here once listening")
	lifetime := flag.Duration("token-lifetime", time.Hour, "access token lifetime")
	logFile := flag.String("log", "", "log file (default stderr)")
	envFile := flag.String("env-file", "", "write the fake's IMAP/POP3/SMTP addresses and CA file as shell variables here once listening")
	flag.Var(&apps, "app", "CLIENT_ID[:SECRET] (repeatable; no secret = public client)")
	flag.Var(&users, "user", "UPN (repeatable)")
	flag.Var(&mailboxes, "mailbox", "ADDR[=DELEGATE,DELEGATE...] (repeatable)")
	flag.Var(&grants, "grant-app", "CLIENT_ID=MAILBOX: app-only access (repeatable)")
	flag.Var(&roles, "app-role", "CLIENT_ID=ROLE: Microsoft Graph application permission, Mail.Send or Mail.ReadWrite (repeatable)")
	flag.Var(&sendAs, "send-as", "MAILBOX=TRUSTEE: TRUSTEE has Send As on MAILBOX (repeatable)")
	graphURLFile := flag.String("graph-url-file", "", "write the fake Graph endpoint's base URL here once listening")
	caFile := flag.String("ca-file", "", "write the PEM of the CA that signed the Graph endpoint's certificate here")
	flag.Parse()

	out := io.Writer(os.Stderr)
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fakeidp:", err)
			os.Exit(1)
		}
		out = f
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	extra := graphSetup{urlFile: *graphURLFile, caFile: *caFile, roles: roles, sendAs: sendAs}
	if err := run(log, *listen, *urlFile, *envFile, *lifetime, apps, users, mailboxes, grants, extra); err != nil {
		log.Error("fakeidp: exiting", "error", err)
		os.Exit(1)
	}
}

// graphSetup holds the Graph-related flags.
type graphSetup struct {
	urlFile, caFile string
	roles, sendAs   []string
}

// writeFileAtomic writes data to path through a temporary file.
func writeFileAtomic(path string, data []byte) error {
	if err := os.WriteFile(path+".tmp", data, 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

func run(log *slog.Logger, listen, urlFile, envFile string, lifetime time.Duration, apps, users, mailboxes, grants []string, g graphSetup) error {
	f, err := fakems.Start(fakems.Options{Logger: log.With("component", "fakems"), AccessTokenLifetime: lifetime})
	if err != nil {
		return fmt.Errorf("fakeidp: start fake: %w", err)
	}
	defer f.Close()
	s := &idp{fake: f, log: log, hc: &http.Client{Timeout: introspectTimeout}, delegates: map[string]map[string]bool{}, appGrants: map[string]map[string]bool{}}
	for _, a := range apps {
		id, secret, _ := strings.Cut(a, ":")
		f.AddApp(id, secret)
	}
	for _, u := range users {
		f.AddUser(u)
	}
	for _, m := range mailboxes {
		addr, dl, _ := strings.Cut(m, "=")
		var ds []string
		if dl != "" {
			ds = strings.Split(dl, ",")
		}
		f.AddMailbox(addr, ds...)
		set := map[string]bool{}
		for _, d := range ds {
			set[norm(d)] = true
		}
		s.delegates[norm(addr)] = set
	}
	for _, g := range grants {
		id, mb, _ := strings.Cut(g, "=")
		f.GrantApp(id, mb)
		if s.appGrants[norm(mb)] == nil {
			s.appGrants[norm(mb)] = map[string]bool{}
		}
		s.appGrants[norm(mb)][id] = true
	}

	appRoles := map[string][]string{}
	for _, r := range g.roles {
		id, role, _ := strings.Cut(r, "=")
		appRoles[id] = append(appRoles[id], role)
	}
	for id, rs := range appRoles {
		f.SetAppRoles(id, rs...)
	}
	for _, sa := range g.sendAs {
		mb, trustee, _ := strings.Cut(sa, "=")
		f.GrantSendAs(mb, trustee)
	}
	if g.caFile != "" {
		if err := f.WriteCAFile(g.caFile); err != nil {
			return fmt.Errorf("fakeidp: %w", err)
		}
	}
	if g.urlFile != "" {
		if err := writeFileAtomic(g.urlFile, []byte(f.GraphURL()+"\n")); err != nil {
			return fmt.Errorf("fakeidp: graph url file: %w", err)
		}
	}

	target, err := url.Parse(f.AuthorityURL)
	if err != nil {
		return fmt.Errorf("fakeidp: authority url: %w", err)
	}
	mux := http.NewServeMux()
	proxy := httputil.NewSingleHostReverseProxy(target)
	audit := newRefreshAudit(f.AuthorityURL)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if isToken(r) {
			audit.serveToken(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /test/refresh-stats", audit.stats)
	mux.HandleFunc("POST /test/token-hold", audit.setHold)
	mux.HandleFunc("POST /dovecot/grant", s.grant)
	mux.HandleFunc("POST /dovecot/introspect", s.introspectHandler)
	mux.HandleFunc("POST /test/approve", s.approve)
	mux.HandleFunc("POST /test/revoke", s.revoke)
	mux.HandleFunc("POST /test/token", s.token)
	mux.HandleFunc("POST /test/fault", s.setFault)
	mux.HandleFunc("POST /test/graph-fault", s.setGraphFault)
	mux.HandleFunc("POST /test/deliver", s.deliver)
	mux.HandleFunc("GET /test/folder", s.folder)

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("fakeidp: listen: %w", err)
	}
	base := "http://" + ln.Addr().String()
	if urlFile != "" {
		if err := writeFileAtomic(urlFile, []byte(base+"\n")); err != nil {
			return fmt.Errorf("fakeidp: url file: %w", err)
		}
	}
	if envFile != "" {
		if err := writeEnvFile(f, envFile); err != nil {
			return err
		}
	}
	log.Info("fakeidp: listening", "url", base, "fake", f.AuthorityURL)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	go func() { <-sig; srv.Close() }()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("fakeidp: serve: %w", err)
	}
	return nil
}

// writeEnvFile writes the fake's upstream servers and its CA (beside path,
// as path.ca.pem) for a shell to source.
func writeEnvFile(f *fakems.Fake, path string) error {
	ca := path + ".ca.pem"
	if err := f.WriteCAFile(ca); err != nil {
		return fmt.Errorf("fakeidp: env file: %w", err)
	}
	env := fmt.Sprintf("FAKE_IMAP=%s\nFAKE_POP3=%s\nFAKE_SMTP=%s\nFAKE_CA_FILE=%s\n", f.IMAPAddr, f.POP3Addr, f.SMTPAddr, ca)
	if err := os.WriteFile(path+".tmp", []byte(env), 0o644); err != nil {
		return fmt.Errorf("fakeidp: env file: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("fakeidp: env file: %w", err)
	}
	return nil
}

func norm(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// introspect asks the fake who owns token: a UPN, or for an app-only token
// the client ID with app set. ok is false for unknown or expired tokens.
func (s *idp) introspect(token string) (user string, app, ok bool, err error) {
	resp, err := s.hc.PostForm(s.fake.AuthorityURL+"/introspect", url.Values{"token": {token}})
	if err != nil {
		return "", false, false, fmt.Errorf("fakeidp: introspect: %w", err)
	}
	defer resp.Body.Close()
	var r struct {
		Active   bool   `json:"active"`
		Username string `json:"username"`
		Sub      string `json:"sub"`
		Aud      string `json:"aud"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return "", false, false, fmt.Errorf("fakeidp: introspect: %s: %w", resp.Status, err)
	}
	if r.Active && r.Aud != outlookAudience {
		// A Graph token: Exchange's IMAP would refuse it.
		return "", false, false, nil
	}
	if r.Active && r.Username == "" && r.Sub != "" {
		return r.Sub, true, true, nil
	}
	return r.Username, false, r.Active && r.Username != "", nil
}

func (s *idp) introspectHandler(w http.ResponseWriter, r *http.Request) {
	user, _, ok, err := s.introspect(r.FormValue("token"))
	if err != nil {
		writeJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error()})
		return
	}
	if !ok {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"active": true, "username": user})
}

func (s *idp) grant(w http.ResponseWriter, r *http.Request) {
	login := norm(r.FormValue("username"))
	token := r.FormValue("password")
	s.mu.Lock()
	fault := s.grantCode
	s.mu.Unlock()
	if fault != 0 {
		s.log.Info("grant: fault injected", "mailbox", login, "status", fault)
		writeJSON(w, fault, map[string]any{"error": "temporarily_unavailable"})
		return
	}
	user, app, ok, err := s.introspect(token)
	if err != nil {
		s.log.Warn("grant: introspection failed", "mailbox", login, "error", err)
		writeJSON(w, http.StatusBadGateway, map[string]any{"error": "temporarily_unavailable"})
		return
	}
	var allowed bool
	switch {
	case !ok:
	case app:
		allowed = s.appAllowed(login, user)
	default:
		allowed = norm(user) == login || s.isDelegate(login, norm(user))
	}
	s.log.Info("grant", "mailbox", login, "user", user, "app", app, "active", ok, "allowed", allowed)
	if !allowed {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_grant", "error_description": "token not valid for " + login})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": token, "token_type": "Bearer", "expires_in": 300,
		"username": login, "active": true,
	})
}

func (s *idp) isDelegate(mailbox, upn string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.delegates[mailbox][upn]
}

func (s *idp) appAllowed(mailbox, clientID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appGrants[mailbox][clientID]
}

func (s *idp) approve(w http.ResponseWriter, r *http.Request) {
	code, upn := r.FormValue("code"), r.FormValue("upn")
	if err := s.fake.ApproveDevice(code, upn); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
		return
	}
	s.log.Info("device code approved", "user", upn)
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (s *idp) revoke(w http.ResponseWriter, r *http.Request) {
	upn := r.FormValue("upn")
	s.fake.RevokeRefreshTokens(upn)
	s.log.Info("refresh tokens revoked", "user", upn)
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (s *idp) token(w http.ResponseWriter, r *http.Request) {
	tok := s.fake.IssueAccessToken(r.FormValue("upn"))
	writeJSON(w, http.StatusOK, map[string]any{"access_token": tok})
}

func (s *idp) setFault(w http.ResponseWriter, r *http.Request) {
	code := 0
	if v := r.FormValue("grant"); v != "" {
		if _, err := fmt.Sscan(v, &code); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": "grant: not a status code"})
			return
		}
	}
	s.mu.Lock()
	s.grantCode = code
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (s *idp) setGraphFault(w http.ResponseWriter, r *http.Request) {
	var fault fakems.GraphFault
	for name, dst := range map[string]*int{"status": &fault.Status, "count": &fault.Count, "retry_after": &fault.RetryAfter} {
		if v := r.FormValue(name); v != "" {
			if _, err := fmt.Sscan(v, dst); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]any{"error": name + ": not a number"})
				return
			}
		}
	}
	fault.Code, fault.Message, fault.Route = r.FormValue("code"), r.FormValue("message"), r.FormValue("route")
	s.fake.SetGraphFault(fault)
	s.log.Info("graph fault set", "status", fault.Status, "count", fault.Count)
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (s *idp) deliver(w http.ResponseWriter, r *http.Request) {
	if err := s.fake.Deliver(r.FormValue("mailbox"), []byte(r.FormValue("message"))); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (s *idp) folder(w http.ResponseWriter, r *http.Request) {
	n := len(s.fake.FolderMessages(r.FormValue("mailbox"), r.FormValue("folder")))
	writeJSON(w, http.StatusOK, map[string]any{"count": n})
}

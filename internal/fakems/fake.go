package fakems

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-smtp"
)

// Defaults for Options.
const (
	DefaultAccessTokenLifetime = time.Hour
	DefaultDeviceCodeLifetime  = 15 * time.Minute
	DefaultDeviceInterval      = 1 // seconds; real Entra says 5

	// closeWait bounds how long Close waits for connection goroutines that
	// the libraries own (imapserver, go-smtp) to finish after their sockets
	// were closed.
	closeWait = 5 * time.Second
)

// Options configures a Fake. The zero value is usable.
type Options struct {
	Logger              *slog.Logger  // nil = discard
	AccessTokenLifetime time.Duration // default 1h; tests use seconds
	DeviceCodeLifetime  time.Duration // default 15m
	DeviceInterval      int           // seconds returned as "interval"; default 1 (real Entra says 5)
	// Now is the fake's clock for token, code and device-code expiry.
	// nil = time.Now. Tests may inject a clock they advance by hand.
	Now func() time.Time
	// Google makes the fake play Google Workspace instead of Microsoft
	// 365 (google.go).
	Google bool
	// DiscardSubmitted makes the fake's SMTP read each accepted message to
	// its end and keep nothing of it: no Sent list entry, no Sent Items
	// copy, no delivery to a tenant mailbox. Submitted still counts it.
	// For benchmarks, where keeping gigabytes in memory would be most of
	// the work measured (and its garbage collection most of the noise).
	DiscardSubmitted bool
}

// Fake is a running fake Microsoft 365. Create it with Start and stop it with
// Close. All methods are safe for concurrent use.
type Fake struct {
	AuthorityURL string // "http://127.0.0.1:PORT" (plain HTTP on loopback); tenant paths under it
	IMAPAddr     string // "127.0.0.1:PORT", implicit TLS (like outlook.office365.com:993)
	POP3Addr     string // implicit TLS (like :995)
	SMTPAddr     string // plaintext + STARTTLS; AUTH offered only after STARTTLS (like smtp.office365.com:587)
	CAPEM        []byte // PEM of the fake's own CA that signed the servers' cert (SANs 127.0.0.1, localhost)
	TenantID     string // the fake tenant's GUID ("tid" in id_tokens, "tenant" after admin consent)

	opts    Options
	log     *slog.Logger
	caPool  *x509.CertPool
	cert    tls.Certificate
	jwtKey  []byte
	done    chan struct{} // closed by Close; ends hanging token requests
	closing sync.Once
	wg      sync.WaitGroup // serve loops and POP3 connection handlers
	conns   *tracker

	httpSrv  *http.Server
	graphSrv *http.Server
	graphURL string
	imapSrv  *imapserver.Server
	smtpSrv  *smtp.Server
	popLn    net.Listener
	// rawLns are closed by Close too: imapserver's and go-smtp's Close only
	// see a listener once Serve has registered it, so a Close right after
	// Start could otherwise leave a Serve blocked in Accept forever.
	rawLns []net.Listener

	mu               sync.Mutex
	apps             map[string]*app
	users            map[string]bool
	mailboxes        map[string]*mailbox
	access           map[string]*accessToken
	refresh          map[string]*refreshToken
	codes            map[string]*authCode
	devices          map[string]*deviceAuth // by device_code
	userCodes        map[string]*deviceAuth // by user_code
	revokedAt        map[string]time.Time   // upn -> TokensValidFrom
	fault            TokenFault
	slowDown         int
	signInUser       string
	tokenReqs        int
	tokenReqsByGrant map[string]int
	imapBehaviour    IMAPBehaviour
	smtpDropInData   bool
	smtpAuthAttempts map[string]int // user= of each SMTP AUTH XOAUTH2 (smtp_counters.go)
	sent             []SentMessage
	submitted        int64 // messages accepted over SMTP (also with DiscardSubmitted)
	submittedBytes   int64
	smtpAuthConns    map[string]int
	consent          map[string]map[string]bool // consentKey -> consented scopes
	withheld         map[string]map[string]bool // client ID -> scopes users cannot consent to
	appRoles         map[string][]string        // client ID -> Graph application roles
	smtpAuthTenant   bool                       // Set-TransportConfig -SmtpClientAuthenticationDisabled
	sendFromAlias    bool                       // Set-OrganizationConfig -SendFromAliasEnabled
	graph            graphState                 // guarded by mu
	knobs            knobState                  // guarded by mu (knobs.go)
	gread            graphReadState             // guarded by mu

	// Certificate credentials (identity_certs.go), guarded by mu:
	// registered certificates and client-assertion jtis seen, by client ID.
	appCerts map[string][]*x509.Certificate
	jtis     map[string]time.Time
	google   googleState // guarded by mu (google.go)

	reusedJTIs int // token requests whose client assertion's jti was seen before; guarded by mu

	// storeMu serialises changes to the message store (imapmemserver
	// mailboxes plus the raw-bytes index) so that UID bookkeeping is exact.
	storeMu sync.Mutex
}

// SentMessage is one message accepted by the fake SMTP server.
type SentMessage struct {
	AuthUser, From string // AuthUser is the XOAUTH2 user= (the authenticated mailbox)
	To             []string
	Data           []byte
}

type app struct {
	id, secret string
}

// mailbox is one Exchange mailbox: a user's own or a shared one.
type mailbox struct {
	addr      string
	user      *imapmemserver.User
	delegates map[string]bool // UPNs with FullAccess
	apps      map[string]bool // client IDs with app-only FullAccess
	sendAs    map[string]bool // extra envelope senders; for Graph: mailboxes this one has Send As on
	onBehalf  map[string]bool // UPNs with Send on Behalf on this mailbox
	aliases   map[string]bool // proxy addresses other than the primary one

	// Graph and SMTP AUTH knobs (guarded by Fake.mu).
	restDisabled bool            // Graph: 404 MailboxNotEnabledForRESTAPI
	appDenied    map[string]bool // client IDs an application access policy denies
	maxSendSize  int64           // bytes; 0 = DefaultMaxSendSize
	smtpAuth     SMTPAuthSetting // Set-CASMailbox -SmtpClientAuthenticationDisabled

	// raw holds message bytes by folder and UID, guarded by Fake.storeMu.
	// It may hold UIDs the mailbox no longer has; the mailbox is the truth.
	raw map[string]map[imap.UID][]byte
	// read is the Graph read state (graph_read.go), guarded by storeMu.
	read *mbRead
}

// Folders every fake mailbox has, named as Exchange Online names them.
var defaultFolders = []string{"INBOX", "Drafts", "Sent Items", "Deleted Items", "Junk Email"}

// Start starts the identity platform and the IMAP, POP3 and SMTP servers on
// 127.0.0.1 with ephemeral ports.
func Start(opts Options) (*Fake, error) {
	if opts.AccessTokenLifetime <= 0 {
		opts.AccessTokenLifetime = DefaultAccessTokenLifetime
	}
	if opts.DeviceCodeLifetime <= 0 {
		opts.DeviceCodeLifetime = DefaultDeviceCodeLifetime
	}
	if opts.DeviceInterval <= 0 {
		opts.DeviceInterval = DefaultDeviceInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	caPEM, pool, cert, err := newCA()
	if err != nil {
		return nil, err
	}
	f := &Fake{
		CAPEM:            caPEM,
		TenantID:         newGUID(),
		opts:             opts,
		log:              log,
		caPool:           pool,
		cert:             cert,
		jwtKey:           []byte(randomToken(32)),
		done:             make(chan struct{}),
		conns:            newTracker(),
		apps:             make(map[string]*app),
		users:            make(map[string]bool),
		mailboxes:        make(map[string]*mailbox),
		access:           make(map[string]*accessToken),
		refresh:          make(map[string]*refreshToken),
		codes:            make(map[string]*authCode),
		devices:          make(map[string]*deviceAuth),
		userCodes:        make(map[string]*deviceAuth),
		revokedAt:        make(map[string]time.Time),
		tokenReqsByGrant: make(map[string]int),
		smtpAuthConns:    make(map[string]int),
		consent:          make(map[string]map[string]bool),
		withheld:         make(map[string]map[string]bool),
		appRoles:         make(map[string][]string),
		graph:            newGraphState(),
	}
	f.graph.released = sync.NewCond(&f.mu)
	if err := f.start(); err != nil {
		_ = f.Close()
		return nil, err
	}
	return f, nil
}

func (f *Fake) start() error {
	listen := func() (net.Listener, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("fakems: listen: %w", err)
		}
		f.rawLns = append(f.rawLns, ln)
		return ln, nil
	}

	// Identity platform.
	hln, err := listen()
	if err != nil {
		return err
	}
	f.AuthorityURL = "http://" + hln.Addr().String()
	f.httpSrv = &http.Server{
		Handler:           f.withDate(f.identityHandler()),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(f.log.Handler(), slog.LevelDebug),
	}
	f.goServe("http", func() error { return f.httpSrv.Serve(hln) })

	serverTLS := &tls.Config{Certificates: []tls.Certificate{f.cert}, MinVersion: tls.VersionTLS12}

	// IMAP, implicit TLS.
	iln, err := listen()
	if err != nil {
		return err
	}
	f.IMAPAddr = iln.Addr().String()
	f.imapSrv = f.newIMAPServer()
	iTLS := tls.NewListener(&trackedListener{Listener: iln, t: f.conns}, serverTLS)
	f.goServe("imap", func() error { return f.imapSrv.Serve(&imapListener{Listener: iTLS}) })

	// POP3, implicit TLS.
	pln, err := listen()
	if err != nil {
		return err
	}
	f.POP3Addr = pln.Addr().String()
	f.popLn = tls.NewListener(&trackedListener{Listener: pln, t: f.conns}, serverTLS)
	f.goServe("pop3", func() error { return f.servePOP3(f.popLn) })

	// SMTP submission, plaintext + STARTTLS.
	sln, err := listen()
	if err != nil {
		return err
	}
	f.SMTPAddr = sln.Addr().String()
	f.smtpSrv = f.newSMTPServer(serverTLS)
	f.goServe("smtp", func() error { return f.smtpSrv.Serve(&trackedListener{Listener: sln, t: f.conns}) })

	// Microsoft Graph, HTTPS (like https://graph.microsoft.com).
	gln, err := listen()
	if err != nil {
		return err
	}
	f.graphURL = "https://" + gln.Addr().String()
	f.graphSrv = &http.Server{
		Handler:           f.graphHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(f.log.Handler(), slog.LevelDebug),
	}
	gTLS := tls.NewListener(gln, serverTLS)
	f.goServe("graph", func() error { return f.graphSrv.Serve(gTLS) })
	return nil
}

func (f *Fake) goServe(name string, serve func() error) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		err := serve()
		select {
		case <-f.done:
		default:
			if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, smtp.ErrServerClosed) {
				f.log.Error("fakems: server stopped", "proto", name, "error", err)
			}
		}
	}()
}

// Close closes all listeners and connections and waits for the fake's
// goroutines. It is safe to call more than once.
func (f *Fake) Close() error {
	var err error
	f.closing.Do(func() {
		close(f.done)
		if f.httpSrv != nil {
			err = errors.Join(err, f.httpSrv.Close())
		}
		if f.graphSrv != nil {
			err = errors.Join(err, f.graphSrv.Close())
		}
		if f.imapSrv != nil {
			if e := f.imapSrv.Close(); e != nil && !errors.Is(e, net.ErrClosed) {
				err = errors.Join(err, e)
			}
		}
		if f.smtpSrv != nil {
			if e := f.smtpSrv.Close(); e != nil && !errors.Is(e, net.ErrClosed) && !errors.Is(e, smtp.ErrServerClosed) {
				err = errors.Join(err, e)
			}
		}
		if f.popLn != nil {
			if e := f.popLn.Close(); e != nil && !errors.Is(e, net.ErrClosed) {
				err = errors.Join(err, e)
			}
		}
		for _, ln := range f.rawLns {
			ln.Close()
		}
		f.conns.dropAll()
		f.wg.Wait()
		waited := make(chan struct{})
		go func() { f.conns.wg.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(closeWait):
			err = errors.Join(err, errors.New("fakems: close: connections still open after 5s"))
		}
	})
	return err
}

// WriteCAFile writes CAPEM to path (mode 0644).
func (f *Fake) WriteCAFile(path string) error {
	if err := os.WriteFile(path, f.CAPEM, 0o644); err != nil {
		return fmt.Errorf("fakems: write CA file: %w", err)
	}
	return nil
}

// ClientTLS returns a client TLS config that trusts the fake's CA.
func (f *Fake) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: f.caPool, MinVersion: tls.VersionTLS12}
}

// DropConnections abruptly closes every open IMAP, POP3 and SMTP connection.
func (f *Fake) DropConnections() { f.conns.dropAll() }

func (f *Fake) now() time.Time { return f.opts.Now() }

func norm(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// ---- Directory ----

// AddApp registers an application. secret "" makes it a public client
// (device code and auth code + PKCE without a secret); otherwise it is a
// confidential client that must present the secret on every token request.
func (f *Fake) AddApp(clientID, secret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.apps[clientID] = &app{id: clientID, secret: secret}
}

// AddUser adds a person who can sign in, with a mailbox of the same address.
func (f *Fake) AddUser(upn string) {
	f.mu.Lock()
	f.users[norm(upn)] = true
	f.mu.Unlock()
	f.AddMailbox(upn)
}

// AddMailbox adds a (shared) mailbox, or extends an existing one, and gives
// delegates FullAccess on it.
func (f *Fake) AddMailbox(addr string, delegates ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mb := f.mailboxLocked(addr)
	for _, d := range delegates {
		mb.delegates[norm(d)] = true
	}
}

func (f *Fake) mailboxLocked(addr string) *mailbox {
	key := norm(addr)
	if mb := f.mailboxes[key]; mb != nil {
		return mb
	}
	mb := &mailbox{
		addr:      key,
		user:      imapmemserver.NewUser(key, ""),
		delegates: make(map[string]bool),
		apps:      make(map[string]bool),
		sendAs:    make(map[string]bool),
		onBehalf:  make(map[string]bool),
		aliases:   make(map[string]bool),
		appDenied: make(map[string]bool),
		raw:       make(map[string]map[imap.UID][]byte),
	}
	for _, name := range defaultFolders {
		_ = mb.user.Create(name, nil) // cannot fail on a fresh user
	}
	f.mailboxes[key] = mb
	return mb
}

// GrantApp gives an app-only (client credentials) token of clientID
// FullAccess on mailbox, like Add-MailboxPermission for a service principal.
func (f *Fake) GrantApp(clientID, mailbox string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mailboxLocked(mailbox).apps[clientID] = true
}

// AllowSendAs lets a token for mailbox use the given extra envelope senders.
func (f *Fake) AllowSendAs(mailbox string, from ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mb := f.mailboxLocked(mailbox)
	for _, a := range from {
		mb.sendAs[norm(a)] = true
	}
}

func (f *Fake) lookupMailbox(addr string) *mailbox {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mailboxes[norm(addr)]
}

// ---- Message store ----

// Deliver puts a message into mailbox's INBOX.
func (f *Fake) Deliver(mailbox string, raw []byte) error {
	mb := f.lookupMailbox(mailbox)
	if mb == nil {
		return fmt.Errorf("fakems: deliver: no mailbox %q", mailbox)
	}
	return f.appendRaw(mb, "INBOX", raw, nil)
}

func (f *Fake) appendRaw(mb *mailbox, folder string, raw []byte, opts *imap.AppendOptions) error {
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	if _, err := mb.appendLocked(folder, raw, opts); err != nil {
		return fmt.Errorf("fakems: append to %s/%s: %w", mb.addr, folder, err)
	}
	return nil
}

// appendLocked appends a copy of raw to folder and indexes its bytes.
// Callers hold storeMu. Errors are *imap.Error, for IMAP sessions.
func (mb *mailbox) appendLocked(folder string, raw []byte, opts *imap.AppendOptions) (*imap.AppendData, error) {
	if opts == nil {
		opts = &imap.AppendOptions{}
	}
	buf := bytes.Clone(raw)
	data, err := mb.user.Append(folder, &literal{Reader: bytes.NewReader(buf), size: int64(len(buf))}, opts)
	if err != nil {
		return nil, err
	}
	mb.rememberLocked(folder, data.UID, buf)
	mb.noteAppendLocked(folder, data.UID, opts.Time)
	return data, nil
}

func (mb *mailbox) rememberLocked(folder string, uid imap.UID, raw []byte) {
	m := mb.raw[folder]
	if m == nil {
		m = make(map[imap.UID][]byte)
		mb.raw[folder] = m
	}
	m[uid] = raw
}

// storedMessage is one message currently in a folder.
type storedMessage struct {
	uid imap.UID
	raw []byte
}

// folderMessagesLocked returns the messages folder currently holds, in UID
// order. Callers hold storeMu.
func (mb *mailbox) folderMessagesLocked(folder string) ([]storedMessage, error) {
	uids, err := folderUIDs(mb.user, folder)
	if err != nil {
		return nil, err
	}
	out := make([]storedMessage, 0, len(uids))
	for _, uid := range uids {
		if raw, ok := mb.raw[folder][uid]; ok {
			out = append(out, storedMessage{uid: uid, raw: raw})
		}
	}
	return out, nil
}

// folderUIDs lists the UIDs in folder through a private session.
func folderUIDs(u *imapmemserver.User, folder string) ([]imap.UID, error) {
	sess := imapmemserver.NewUserSession(u)
	defer sess.Close()
	if _, err := sess.Select(folder, nil); err != nil {
		return nil, err
	}
	data, err := sess.Search(imapserver.NumKindUID, &imap.SearchCriteria{}, &imap.SearchOptions{})
	if err != nil {
		return nil, err
	}
	uids := data.AllUIDs()
	slices.Sort(uids)
	return uids, nil
}

// expungeLocked removes the given UIDs from folder for real; IMAP sessions
// that have it selected see EXPUNGE responses. Callers hold storeMu.
func (mb *mailbox) expungeLocked(folder string, uids []imap.UID) error {
	if len(uids) == 0 {
		return nil
	}
	sess := imapmemserver.NewUserSession(mb.user)
	defer sess.Close()
	if _, err := sess.Select(folder, nil); err != nil {
		return err
	}
	set := imap.UIDSetNum(uids...)
	if err := sess.Store(nil, set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil); err != nil {
		return err
	}
	if err := sess.Expunge(nil, &set); err != nil {
		return err
	}
	for _, uid := range uids {
		delete(mb.raw[folder], uid)
	}
	return nil
}

// Messages returns mailbox's current INBOX contents (raw RFC 5322), in order.
func (f *Fake) Messages(mailbox string) [][]byte {
	mb := f.lookupMailbox(mailbox)
	if mb == nil {
		return nil
	}
	f.storeMu.Lock()
	defer f.storeMu.Unlock()
	msgs, err := mb.folderMessagesLocked("INBOX")
	if err != nil {
		return nil
	}
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i] = bytes.Clone(m.raw)
	}
	return out
}

// Sent returns every message accepted by the SMTP server, in order.
// Submitted returns how many messages the fake's SMTP accepted and their
// bytes (after dot-unstuffing), kept or not.
func (f *Fake) Submitted() (messages, bytes int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.submitted, f.submittedBytes
}

func (f *Fake) Sent() []SentMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]SentMessage, len(f.sent))
	for i, m := range f.sent {
		out[i] = SentMessage{AuthUser: m.AuthUser, From: m.From, To: slices.Clone(m.To), Data: bytes.Clone(m.Data)}
	}
	return out
}

// literal is an imap.LiteralReader over bytes.
type literal struct {
	io.Reader
	size int64
}

func (l *literal) Size() int64 { return l.size }

// ---- Mailbox access, shared by IMAP, POP3 and SMTP ----

// Protocol scopes required on delegated tokens.
const (
	scopeIMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"
	scopePOP  = "https://outlook.office.com/POP.AccessAsUser.All"
	scopeSMTP = "https://outlook.office.com/SMTP.Send"
	scopeApp  = "https://outlook.office365.com/.default"
)

// bearerCheck is the result of checking an XOAUTH2 login.
type bearerCheck struct {
	tokenOK   bool   // the token is known, unexpired and has the protocol's scope
	mailboxOK bool   // ... and may open the user= mailbox
	who       string // the token's subject (UPN or app client ID), for logs
	mailbox   *mailbox
}

// checkBearer checks token for protocol scope and for access to mailbox
// user, as Exchange does at AUTHENTICATE.
func (f *Fake) checkBearer(scope, user, token string) bearerCheck {
	f.mu.Lock()
	defer f.mu.Unlock()
	var res bearerCheck
	at := f.access[token]
	if at == nil || at.expired || !f.now().Before(at.expires) {
		return res
	}
	if at.aud != audOutlook {
		// A Graph token is refused by Exchange's IMAP, POP and SMTP.
		return res
	}
	if at.app {
		res.who = at.clientID
		res.tokenOK = true // .default covers IMAP, POP and SMTP
	} else {
		res.who = at.upn
		res.tokenOK = slices.Contains(at.scopes, scope)
	}
	if !res.tokenOK {
		return res
	}
	mb := f.mailboxes[norm(user)]
	if mb == nil {
		return res
	}
	res.mailbox = mb
	if at.app {
		res.mailboxOK = mb.apps[at.clientID]
	} else {
		res.mailboxOK = mb.addr == at.upn || mb.delegates[at.upn]
	}
	return res
}

// parseXOAUTH2 splits an XOAUTH2 initial response into user and token.
func parseXOAUTH2(resp []byte) (user, token string, err error) {
	var haveUser, haveAuth bool
	for _, field := range strings.Split(string(resp), "\x01") {
		switch {
		case strings.HasPrefix(field, "user="):
			user, haveUser = strings.TrimPrefix(field, "user="), true
		case strings.HasPrefix(field, "auth="):
			v := strings.TrimPrefix(field, "auth=")
			if len(v) < 7 || !strings.EqualFold(v[:7], "Bearer ") {
				return "", "", errors.New("fakems: xoauth2: auth is not a bearer token")
			}
			token, haveAuth = v[7:], true
		}
	}
	if !haveUser || !haveAuth || !strings.HasSuffix(string(resp), "\x01\x01") {
		return "", "", errors.New("fakems: xoauth2: malformed initial response")
	}
	return user, token, nil
}

// xoauth2Server is the server side of SASL XOAUTH2. It asks for the
// response with an empty challenge if the client sent none, then calls check
// once. Exchange sends no JSON error challenge: check's error is the final
// answer.
type xoauth2Server struct {
	check func(user, token string, err error) error
	asked bool
	// failChallenge, if set, is sent (as Gmail does) when check fails; the
	// failure is the answer to the client's response to it.
	failChallenge []byte
	pending       error
}

func (s *xoauth2Server) Next(resp []byte) (challenge []byte, done bool, err error) {
	if s.pending != nil {
		err := s.pending
		s.pending = nil
		return nil, false, err
	}
	if resp == nil && !s.asked {
		// A nil challenge is written as a bare "+ " (IMAP) or "334 "
		// (SMTP), as Exchange does; []byte{} would become "+ =".
		s.asked = true
		return nil, false, nil
	}
	user, token, perr := parseXOAUTH2(resp)
	if err := s.check(user, token, perr); err != nil {
		var ne noChallenge
		if errors.As(err, &ne) {
			return nil, false, ne.error
		}
		if s.failChallenge != nil {
			s.pending = err
			return s.failChallenge, false, nil
		}
		return nil, false, err
	}
	return nil, true, nil
}

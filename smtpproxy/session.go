package smtpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

// session is one local SMTP session (go-smtp creates it at EHLO and again
// after STARTTLS). It owns at most one upstream connection.
//
// go-smtp calls the Session methods from the connection's goroutine, except
// that for BDAT it runs Data in a goroutine of its own while the connection
// goroutine may call Reset or Logout; opMu serialises them.
type session struct {
	srv    *Server
	conn   *smtp.Conn
	tc     *trackedConn
	remote net.Addr
	log    *slog.Logger // proto, conn, remote; after AUTH also user, account, mailbox
	ctx    context.Context
	cancel context.CancelFunc
	start  time.Time

	opMu sync.Mutex
	cfg  *config.Config // the snapshot the connection was accepted under

	checked *frontdoor.Login // after AUTH
	user    string
	account *config.Account
	fails   *frontdoor.Conn // failed AUTHs when there is no trackedConn (tests)

	// Transaction state.
	from  string
	rcpts []string
	inTx  bool     // the upstream accepted MAIL and the transaction is open there
	gtx   *graphTx // the transaction goes through Microsoft Graph (graph.go)

	// With an upstream that offers PIPELINING, MAIL is held back (pending)
	// and sent with the first RCPT; mailRefused is then the upstream's
	// refusal of it, the reply to every RCPT of the transaction.
	mailOpts     *smtp.MailOptions
	pending      bool
	pendingFresh bool // the connection was dialled for this MAIL
	mailRefused  *smtp.SMTPError

	// smtpAuthOff is the upstream's "535 5.7.139" (SMTP AUTH disabled)
	// from the last dial, for send_via = "auto".
	smtpAuthOff *smtp.SMTPError

	// Statistics for the closing log line.
	messages int
	bytesIn  int64

	upMu sync.Mutex // guards up against abortUpstream from Shutdown
	up   *upstream

	logoutOnce sync.Once
}

var _ interface {
	smtp.Session
	smtp.AuthSession
} = (*session)(nil)

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	tc := connOf(c)
	log := s.log
	if tc != nil {
		log = tc.log
	}
	ctx, cancel := context.WithCancel(s.ctx)
	sess := &session{
		srv:    s,
		conn:   c,
		tc:     tc,
		remote: c.Conn().RemoteAddr(),
		log:    log,
		ctx:    ctx,
		cancel: cancel,
		start:  time.Now(),
		cfg:    s.snapshot(tc),
		fails:  s.failures.Conn(),
	}
	if tc != nil {
		tc.setSession(sess)
	}
	return sess, nil
}

func (s *session) limits() config.SMTPLimits { return smtpLimits(s.cfg) }

// smtpLimits are cfg's smtp limits, or the defaults.
func smtpLimits(cfg *config.Config) config.SMTPLimits {
	if cfg != nil && cfg.SMTP != nil {
		return cfg.SMTP.Limits
	}
	return config.SMTPLimits{
		MaxMessageBytes: config.DefaultMaxMessageBytes,
		MaxRecipients:   config.DefaultMaxRecipients,
		ReadTimeout:     config.DefaultSMTPReadTimeout,
		WriteTimeout:    config.DefaultSMTPWriteTimeout,
		UpstreamTimeout: config.DefaultUpstreamTimeout,
		ConnectionWait:  config.DefaultConnectionWait,
		MaxConnections:  config.DefaultMaxConnections,
	}
}

// authAllowed applies the front door's plaintext-password rule with the
// smtp block's allow_insecure_auth.
func (s *session) authAllowed() bool {
	_, isTLS := s.conn.TLSConnectionState()
	return frontdoor.PlaintextAllowed(isTLS, s.remote, s.cfg != nil && s.cfg.SMTP != nil && s.cfg.SMTP.AllowInsecureAuth, nil)
}

// AuthMechanisms implements smtp.AuthSession. Where AUTH would be refused,
// none are returned, so EHLO does not advertise AUTH.
func (s *session) AuthMechanisms() []string {
	if !s.authAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession.
func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.authAllowed() {
		s.log.Warn("AUTH refused on a plaintext connection from a non-loopback address; use STARTTLS or set allow_insecure_auth")
		return nil, errEncryption
	}
	switch mech {
	case sasl.Plain:
		return malformedIs501{sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				f := &frontdoor.Failure{Kind: frontdoor.BadCredentials, Err: errors.New("smtpproxy: PLAIN authorization identity differs from the user name")}
				s.audit(localauth.Attempt{User: user, Result: f.Kind.String(), Err: f.Err})
				return s.authFailed(f)
			}
			return s.login(user, pass)
		})}, nil
	case sasl.Login:
		return newLoginServer(s.login), nil
	}
	return nil, errMechanism
}

// malformedIs501 turns go-sasl's plain-error for a malformed PLAIN response
// ("sasl: invalid response") into 501 5.5.2. go-smtp sends any error that is
// not an *smtp.SMTPError as 454 4.7.0, a temporary code that would make a
// client retry bad input forever.
type malformedIs501 struct{ sasl.Server }

var errMalformedPlain = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Malformed AUTH PLAIN response"}

func (m malformedIs501) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := m.Server.Next(response)
	if err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return challenge, done, errMalformedPlain
		}
		return challenge, done, se // bare, never wrapped: go-smtp type-asserts
	}
	return challenge, done, nil
}

func (s *session) audit(a localauth.Attempt) {
	a.Proto = "smtp"
	a.Remote = localauth.RemoteIP(s.remote)
	log := s.srv.opts.Logger
	if s.tc != nil {
		log = log.With("conn", s.tc.id)
	}
	localauth.Audit(log, s.srv.m, s.srv.opts.LoginObservers, a)
}

// failureReply is the one mapping from a failed login to SMTP's reply:
// only a checked wrong password is 535 5.7.8; everything else keeps the
// message on the client (4xx). A temporary failure is 454 4.7.0 at AUTH and
// 451 4.7.0 when the token fails at MAIL (atAuth false).
func failureReply(f *frontdoor.Failure, atAuth bool) *smtp.SMTPError {
	switch f.Kind {
	case frontdoor.BadCredentials:
		return errBadCreds
	case frontdoor.Throttled:
		return errThrottled
	case frontdoor.Busy:
		return errBusy
	case frontdoor.AccountBusy:
		return errTooManyConns
	case frontdoor.NeedsLogin:
		return errNeedsLogin(f.Account)
	case frontdoor.Failing:
		if atAuth {
			return errLocalTemp
		}
		return errTokenFailing
	case frontdoor.Unreachable:
		return errUpstreamUnreachable
	case frontdoor.Rejected:
		if f.Google {
			return errGoogleRefusedAuth // implicit.go
		}
		return errUpstreamRefusedAuth
	case frontdoor.Stopping:
		return errShuttingDown
	}
	if atAuth {
		return errLocalTemp
	}
	return errTokenTemporary
}

// authFailed applies the shared per-connection failure policy to a failed
// AUTH (the delay before the reply; after the limit the connection is
// closed once the reply is written) and returns the reply.
func (s *session) authFailed(f *frontdoor.Failure) error {
	if !f.Kind.Local() {
		return failureReply(f, true)
	}
	fails := s.fails
	if s.tc != nil {
		fails = s.tc.fails
	}
	hangUp, err := fails.Failed(s.ctx)
	if err != nil {
		return errLocalTemp
	}
	if hangUp && s.tc != nil {
		s.tc.hangUp.Store(true)
	}
	return failureReply(f, true)
}

// login runs the front door's local login (credentials, then the account
// in the configuration the connection was accepted under). The slot and
// the token follow at the first MAIL (dial). Every outcome writes one
// audit line.
func (s *session) login(user, pass string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	l, f := s.srv.gate.Check(s.ctx, s.cfg, user, pass, localauth.RemoteIP(s.remote))
	if f != nil {
		if s.ctx.Err() != nil { // shutdown gave up on this connection
			s.audit(localauth.Attempt{User: user, Result: localauth.ResultError, Err: f.Err})
			return errLocalTemp
		}
		s.audit(localauth.Attempt{User: user, Result: f.Kind.String(), Err: f.Err})
		return s.authFailed(f)
	}
	acct := l.Account
	if s.srv.afterCheck != nil {
		s.srv.afterCheck()
	}
	// A login that completes during a drain is refused like in every proxy.
	if s.tc != nil && s.tc.fs.Draining() {
		s.audit(localauth.Attempt{User: user, Result: frontdoor.Stopping.String(), Account: acct.Name, Mailbox: acct.Mailbox,
			Err: fmt.Errorf("smtpproxy: login completed during shutdown: %w", frontdoor.ErrShuttingDown)})
		return failureReply(&frontdoor.Failure{Kind: frontdoor.Stopping}, true)
	}
	s.checked = l
	s.user = l.Name
	s.account = acct
	s.log = s.log.With("user", l.Name, "account", acct.Name, "mailbox", acct.Mailbox)
	s.audit(localauth.Attempt{User: user, Result: localauth.ResultOK, Account: acct.Name, Mailbox: acct.Mailbox})
	return nil
}

// Mail implements smtp.Session: sender policy first, then the upstream
// connection (opened and logged in here at the first MAIL) and the
// upstream MAIL: here, or with the first RCPT where the upstream offers
// PIPELINING.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.account == nil {
		return errAuthRequired
	}
	if s.inTx {
		// MAIL inside an open transaction: start over upstream too.
		s.resetUpstream()
	}
	s.gtx = nil
	s.from, s.rcpts = from, nil
	s.pending, s.mailRefused = false, nil
	if !s.account.SenderAllowed(from) {
		s.log.Warn("sender refused by policy", "from", from)
		s.srv.m.SMTPMessages.WithLabelValues("refused").Inc()
		return errSenderNotAllowed(from, s.account.AllowedSenders())
	}
	if opts != nil && opts.Size > s.limits().MaxMessageBytes {
		s.srv.m.SMTPMessages.WithLabelValues("refused").Inc()
		return smtp.ErrDataTooLarge
	}
	if ok, why := s.srv.useGraph(s.account); ok {
		s.srv.m.SetSendPath(s.account.Name, "graph")
		return s.graphMail(why)
	}
	s.mailOpts = upstreamMailOptions(opts)
	up, fresh, viaGraph, err := s.connectForMail()
	if viaGraph {
		return s.graphMail(autoWhy)
	}
	if err != nil {
		return err
	}
	if up.pipelining {
		// MAIL goes up with the first RCPT, in one write (RFC 2920): the
		// client's MAIL costs no upstream round trip. A refusal of MAIL
		// is relayed verbatim as the reply to that RCPT.
		s.pending, s.pendingFresh = true, fresh
		return nil
	}
	return s.openTx(up, fresh, nil)
}

// connectForMail returns the upstream connection for a new transaction,
// dialling one if there is none. viaGraph reports that the upstream has
// SMTP AUTH disabled and, with send_via = "auto", the transaction goes
// through Graph instead. err is the client's reply.
func (s *session) connectForMail() (up *upstream, fresh, viaGraph bool, err error) {
	s.smtpAuthOff = nil
	up, fresh, werr := s.ensureUpstream()
	if werr != nil && s.smtpAuthOff != nil && s.account.SendVia == config.SendViaAuto {
		// SMTP AUTH is disabled for the tenant or mailbox: this
		// transaction and the next ones go through Graph.
		s.srv.switchToGraph(s, s.smtpAuthOff)
		return nil, false, true, nil
	}
	if werr != nil {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		return nil, false, false, werr
	}
	if s.mailOpts != nil && s.mailOpts.UTF8 {
		if ok, _ := up.c.Extension("SMTPUTF8"); !ok {
			return nil, false, false, errNoUTF8Upstream
		}
	}
	return up, fresh, false, nil
}

// firstRcpt is a RCPT sent upstream together with the deferred MAIL.
type firstRcpt struct {
	to   string
	opts *smtp.RcptOptions
}

// openTx sends the transaction's MAIL on up (nil: dial one), with rcpt
// also its first RCPT in the same write, and returns the client's reply
// to the command that triggered it. A cached connection that turns out
// to be gone (Exchange closes idle connections) is re-dialled once: no
// transaction exists upstream yet.
func (s *session) openTx(up *upstream, fresh bool, rcpt *firstRcpt) error {
	for attempt := 0; ; attempt++ {
		if up == nil {
			var viaGraph bool
			var err error
			up, fresh, viaGraph, err = s.connectForMail()
			if viaGraph {
				if err := s.graphMail(autoWhy); err != nil || rcpt == nil {
					return err
				}
				return s.graphRcpt(rcpt.to)
			}
			if err != nil {
				return err
			}
		}
		var mailErr, rcptErr error
		if rcpt != nil {
			mailErr, rcptErr = up.c.MailRcpt(s.from, s.mailOpts, rcpt.to, rcpt.opts)
		} else {
			mailErr = up.c.Mail(s.from, s.mailOpts)
		}
		if mailErr == nil {
			s.inTx = true
			s.srv.smtpWorks(s)
			s.srv.m.SetSendPath(s.account.Name, "smtp")
			if rcpt == nil {
				return nil
			}
			return s.rcptDone(up, rcpt.to, rcptErr)
		}
		se, isSMTP := asSMTP(mailErr)
		if isSMTP && se.Code != 421 {
			s.log.Info("upstream refused MAIL", "from", s.from, "error", codeString(se))
			s.countRefusal(se)
			if rcpt != nil {
				// Every further RCPT of this transaction gets the same reply.
				s.mailRefused = se
				if _, ok := asSMTP(rcptErr); !ok {
					// The RCPT's reply never came: out of step.
					s.dropUpstream(up)
				}
			}
			return se // bare: go-smtp type-asserts *smtp.SMTPError
		}
		s.dropUpstream(up)
		addr := up.addr
		up = nil
		if fresh || attempt > 0 {
			s.srv.m.UpstreamErrors.WithLabelValues("smtp", errorClass(mailErr)).Inc()
			s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
			s.log.Warn("upstream connection failed at MAIL", "upstream", addr, "error", mailErr.Error())
			if isSMTP {
				return se
			}
			return errUpstreamLost
		}
		s.log.Debug("cached upstream connection is gone, re-dialling", "error", mailErr.Error())
	}
}

func upstreamMailOptions(o *smtp.MailOptions) *smtp.MailOptions {
	if o == nil {
		return nil
	}
	// AUTH= is not forwarded (the upstream identity is the mailbox) and
	// REQUIRETLS is not offered locally.
	return &smtp.MailOptions{Body: o.Body, Size: o.Size, UTF8: o.UTF8, Return: o.Return, EnvelopeID: o.EnvelopeID}
}

func (s *session) countRefusal(se *smtp.SMTPError) {
	if se.Code/100 == 5 {
		s.srv.m.SMTPMessages.WithLabelValues("refused").Inc()
	} else {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
	}
}

// Rcpt implements smtp.Session: each recipient is relayed and the
// upstream's reply comes back verbatim.
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.account == nil {
		return errAuthRequired
	}
	if s.gtx != nil {
		return s.graphRcpt(to)
	}
	if s.mailRefused != nil {
		return s.mailRefused
	}
	if max := s.limits().MaxRecipients; max > 0 && len(s.rcpts) >= max {
		return errTooManyRcpts
	}
	if s.pending {
		s.pending = false
		return s.openTx(s.current(), s.pendingFresh, &firstRcpt{to: to, opts: opts})
	}
	up := s.current()
	if up == nil || !s.inTx {
		return errUpstreamLost
	}
	return s.rcptDone(up, to, up.c.Rcpt(to, opts))
}

// rcptDone turns the upstream's answer to RCPT into the client's reply.
func (s *session) rcptDone(up *upstream, to string, err error) error {
	if err == nil {
		s.rcpts = append(s.rcpts, to)
		return nil
	}
	if se, ok := asSMTP(err); ok {
		s.log.Info("upstream refused recipient", "to", to, "error", codeString(se))
		return se
	}
	s.srv.m.UpstreamErrors.WithLabelValues("smtp", errorClass(err)).Inc()
	s.log.Warn("upstream connection lost at RCPT", "upstream", up.addr, "error", err.Error())
	s.dropUpstream(up)
	s.inTx = false
	return errUpstreamLost
}

// Data implements smtp.Session. The body is streamed to the upstream as it
// arrives; the client gets 250 only after the upstream's 250.
func (s *session) Data(r io.Reader) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.account == nil {
		return errAuthRequired
	}
	if s.gtx != nil {
		return s.graphData(r)
	}
	up := s.current()
	if up == nil || !s.inTx {
		return errUpstreamLost
	}
	lim := s.limits()
	if s.tc != nil {
		s.tc.setInData(true, lim.ReadTimeout)
		defer s.tc.setInData(false, 0)
	}
	start := time.Now()
	norm := newCRLFReader(r)
	defer norm.release()
	src := &bodyReader{r: norm, limit: lim.MaxMessageBytes}
	reply, err := up.sendMessage(src, lim.UpstreamTimeout)
	n := src.n
	s.bytesIn += n
	s.srv.m.BytesRelayed.WithLabelValues("smtp", "up").Add(float64(n))
	if err != nil {
		return s.relayFailed(up, src, err)
	}
	s.inTx = false
	if norm.fixed > 0 {
		s.log.Info("bare CR or LF in the message normalised to CRLF", "from", s.from, "count", norm.fixed)
	}
	s.messages++
	s.srv.m.SMTPMessages.WithLabelValues("relayed").Inc()
	ok := replyError(250, reply)
	s.log.Info("message relayed", "from", s.from, "rcpts", len(s.rcpts), "bytes_in", n,
		"duration", time.Since(start).Round(time.Millisecond).String(), "upstream_reply", codeString(ok))
	// Returning a 250 "error" makes go-smtp relay the upstream's own 250
	// text (queue id) instead of its generic "OK: queued".
	return ok
}

// relayFailed logs why a message was not relayed and returns the client's
// reply. An upstream refusal keeps the connection (Reset sends RSET);
// anything else drops it, so an unfinished message is never completed.
func (s *session) relayFailed(up *upstream, src *bodyReader, err error) error {
	n := src.n
	re := &relayError{stage: stageBody, err: err}
	errors.As(err, &re)
	if se, ok := asSMTP(re.err); ok {
		switch re.stage {
		case stageStart:
			s.log.Info("upstream refused DATA", "error", codeString(se))
		case stageBody:
			s.log.Info("upstream refused the message during the transfer", "from", s.from, "rcpts", len(s.rcpts), "bytes_in", n, "error", codeString(se))
		default:
			s.inTx = false
			s.log.Info("upstream refused the message", "from", s.from, "rcpts", len(s.rcpts), "bytes_in", n, "error", codeString(se))
		}
		s.countRefusal(se)
		return se // bare: go-smtp type-asserts *smtp.SMTPError
	}
	s.dropUpstream(up)
	s.inTx = false
	s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
	switch {
	case errors.Is(src.err, smtp.ErrDataTooLarge):
		s.log.Warn("message too large, not delivered", "from", s.from, "bytes_in", n, "limit", src.limit)
		return smtp.ErrDataTooLarge
	case src.err != nil:
		s.log.Warn("client stopped sending the message, not delivered", "from", s.from, "bytes_in", n, "error", src.err.Error())
		return errClientGone
	}
	s.srv.m.UpstreamErrors.WithLabelValues("smtp", errorClass(re.err)).Inc()
	switch re.stage {
	case stageStart:
		s.log.Warn("upstream connection lost at DATA", "upstream", up.addr, "error", re.err.Error())
	case stageBody:
		s.log.Warn("upstream connection lost during DATA, message not delivered", "upstream", up.addr, "from", s.from, "bytes_in", n, "error", re.err.Error())
	default:
		// The end of the message went out but no reply came back: the
		// message may have been delivered. A 4xx makes the client retry,
		// which at worst duplicates it; losing it is worse.
		s.log.Warn("no upstream reply after the end of DATA; the client will retry (possible duplicate)", "upstream", up.addr, "from", s.from, "bytes_in", n, "error", re.err.Error())
	}
	return errUpstreamLost
}

// Reset implements smtp.Session. go-smtp calls it after every DATA, on RSET
// and on a repeated EHLO; RSET goes upstream only if a transaction is open
// there.
func (s *session) Reset() {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.from, s.rcpts = "", nil
	s.gtx = nil
	s.pending, s.mailRefused = false, nil
	if s.inTx {
		s.resetUpstream()
	}
}

func (s *session) resetUpstream() {
	s.inTx = false
	up := s.current()
	if up == nil {
		return
	}
	if err := up.c.Reset(); err != nil {
		s.log.Debug("upstream RSET failed, dropping the connection", "error", err.Error())
		s.dropUpstream(up)
	}
}

// Logout implements smtp.Session: QUIT upstream and release the slot.
func (s *session) Logout() error {
	s.logoutOnce.Do(func() {
		if s.tc != nil {
			s.tc.setSession(nil)
		}
		if !s.opMu.TryLock() {
			// Data is still running on go-smtp's BDAT goroutine; go-smtp
			// closes the BDAT pipe only after Logout returns (STARTTLS in
			// mid-BDAT), so waiting here would deadlock. Cut the upstream
			// instead: an unfinished message is never completed.
			s.log.Debug("session closed during a BDAT transfer; upstream connection dropped")
			s.abortUpstream()
			return
		}
		defer s.opMu.Unlock()
		s.upMu.Lock()
		up := s.up
		s.up = nil
		s.upMu.Unlock()
		if up != nil {
			up.quit()
		}
		s.cancel()
		if s.account != nil {
			s.log.Info("session closed", "messages", s.messages, "bytes_in", s.bytesIn,
				"duration", time.Since(s.start).Round(time.Millisecond).String())
		}
	})
	return nil
}

func (s *session) current() *upstream {
	s.upMu.Lock()
	defer s.upMu.Unlock()
	return s.up
}

// ensureUpstream returns the session's upstream connection, dialling it if
// there is none; fresh reports a new connection. Errors are wire errors.
func (s *session) ensureUpstream() (up *upstream, fresh bool, err error) {
	if up := s.current(); up != nil {
		return up, false, nil
	}
	up, werr := s.dial()
	if werr != nil {
		return nil, false, werr
	}
	s.upMu.Lock()
	s.up = up
	s.upMu.Unlock()
	return up, true, nil
}

// dropUpstream closes up without QUIT (and without finishing a DATA).
func (s *session) dropUpstream(up *upstream) {
	s.upMu.Lock()
	if s.up == up {
		s.up = nil
	}
	s.upMu.Unlock()
	up.close()
}

// abortUpstream is called by Shutdown from another goroutine: closing the
// socket unblocks whatever the session is doing upstream.
func (s *session) abortUpstream() {
	s.cancel()
	if up := s.current(); up != nil {
		up.close()
	}
}

// bodyReader counts the message body, enforces the session's size limit
// and remembers a read error so Data can tell a client failure from an
// upstream one.
type bodyReader struct {
	r     io.Reader
	limit int64
	n     int64
	err   error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if b.limit > 0 && b.n > b.limit {
		err = smtp.ErrDataTooLarge
	}
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// deadlineWriter re-arms the upstream write deadline before every write, so
// a stalled upstream fails the message instead of hanging the session.
type deadlineWriter struct {
	w       io.Writer
	conn    net.Conn
	timeout time.Duration
	batch   *batchConn // if set, under w: each Write leaves in one batch
}

func (d *deadlineWriter) arm() {
	if d.timeout > 0 {
		_ = d.conn.SetWriteDeadline(time.Now().Add(d.timeout))
	}
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.arm()
	if d.batch == nil {
		return d.w.Write(p)
	}
	d.batch.begin()
	n, err := d.w.Write(p)
	if ferr := d.batch.end(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}

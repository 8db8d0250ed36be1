package smtpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
	"github.com/oauthbridge/oauthbridge/graphmail"
	"github.com/oauthbridge/oauthbridge/internal/frontdoor"
	"github.com/oauthbridge/oauthbridge/internal/limiter"
	"github.com/oauthbridge/oauthbridge/tokens"
)

// The Graph backend. An account with send_via = "graph" (or "auto" while
// its tenant or mailbox has SMTP AUTH disabled) does not open an upstream
// SMTP connection: MAIL checks the sender policy and gets a Graph token,
// RCPT collects the envelope, and DATA spools the message, fits its
// recipient headers to the envelope (fitRecipients) and submits it with
// POST /users/{mailbox}/sendMail, or for messages over graph.MaxMIMEBytes
// as a draft plus attachment uploads (graphlarge.go). The client gets 250
// only after Graph's 202.
//
// Spool: the message is copied to an unlinked temporary file in
// state_dir/tmp (mode 0600 in a 0700 directory; os.TempDir() if that
// cannot be created) so that it is never held in memory and can be read
// again for a retry or for splitting. The file has no name while it is
// used, so nothing is left behind by a crash; it is at most
// max_message_bytes long, one per message being received.

// Named defaults of the Graph path.
const (
	// SpoolDirName is the spool directory inside state_dir.
	SpoolDirName = "tmp"
	// graphSendTimeout bounds one Graph submission (all its requests):
	// like DefaultSubmissionTimeout, Exchange scans large messages.
	graphSendTimeout = DefaultSubmissionTimeout
)

// graphBackend is the Server's state for the Graph path.
type graphBackend struct {
	limiter limiter.Limiter // "graph:"+mailbox, config.DefaultGraphConcurrency

	mu      sync.Mutex
	auto    map[string]*autoState // account -> send_via = "auto" state
	clients graph.HTTPClients[*config.Provider]
}

// autoState is where an send_via = "auto" account sends now.
type autoState struct {
	onGraph   bool
	since     time.Time
	reason    string
	recheckAt time.Time // try SMTP again from then on
}

// graphTx is an open transaction on the Graph path.
type graphTx struct {
	rcpts []string
	why   string // "send_via = graph" or the auto switch's reason
}

// sendPathSetter is implemented by tokens.Manager: the status page shows
// the send path of each account, and the token store keeps it across
// restarts (SendPath returns the kept one).
type sendPathSetter interface {
	SetSendPath(account, path, reason string, recheckAt time.Time)
	SendPath(account string) (path, reason string, since, recheckAt time.Time, ok bool)
}

func (s *Server) graphTokens() tokens.Source {
	return graphmail.TokenSource(s.opts.GraphTokens, s.opts.Tokens)
}

func (s *Server) graphHTTP(p *config.Provider) *http.Client {
	if s.opts.GraphHTTP != nil {
		return s.opts.GraphHTTP
	}
	return s.gb.clients.Get(p.Name, p, p.RootCAs)
}

// useGraph reports whether the account's next transaction goes through
// Graph: always for send_via = "graph"; for "auto" while it is switched
// and the SMTP recheck is not due.
func (s *Server) useGraph(a *config.Account) (bool, string) {
	if a.SendVia != config.SendViaAuto {
		s.dropAuto(a.Name) // autokept.go: a later "auto" starts from the kept state
	}
	switch a.SendVia {
	case config.SendViaGraph:
		return true, "send_via = graph"
	case config.SendViaAuto:
		s.gb.mu.Lock()
		defer s.gb.mu.Unlock()
		st := s.autoStateLocked(a)
		if st.onGraph && time.Now().Before(st.recheckAt) {
			return true, autoWhy
		}
	}
	return false, ""
}

// autoWhy is the reason logged with messages of a switched "auto" account.
const autoWhy = "send_via = auto, SMTP AUTH disabled"

// switchToGraph records that an "auto" account's SMTP AUTH is disabled:
// logged once per switch, shown in status and metrics.
func (s *Server) switchToGraph(sess *session, se *smtp.SMTPError) string {
	a := sess.account
	reason := "SMTP AUTH is disabled for this mailbox or tenant: " + codeString(se)
	recheck := autoRecheck(sess.limits())
	now := time.Now()
	s.gb.mu.Lock()
	st := s.autoStateLocked(a)
	first := !st.onGraph
	if first {
		st = &autoState{onGraph: true, since: now, reason: reason}
		s.gb.auto[a.Name] = st
	}
	st.recheckAt = now.Add(recheck)
	kept := st.reason
	s.gb.mu.Unlock()
	if first {
		sess.log.Warn("send_via = auto: switching this account to Microsoft Graph because Microsoft 365 refused SMTP AUTH; the message is sent through Graph, and SMTP is tried again later",
			"reason", codeString(se), "recheck_in", recheck.String(),
			"fix", fmt.Sprintf("none needed; to use SMTP again an Exchange administrator runs 'Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false' (or tenant-wide Set-TransportConfig)", a.Mailbox))
		s.m.SendPathSwitches.WithLabelValues(a.Name, "graph").Inc()
		s.m.SetSendPath(a.Name, "graph")
	} else {
		sess.log.Debug("send_via = auto: SMTP AUTH still disabled; staying on Microsoft Graph", "recheck_in", recheck.String())
	}
	if ps, ok := s.opts.Tokens.(sendPathSetter); ok {
		// Kept across restarts; written when the path or the recheck
		// time changes, i.e. at most once per auto_smtp_recheck.
		ps.SetSendPath(a.Name, "graph", kept, now.Add(recheck))
	}
	return reason
}

// smtpWorks records that an "auto" account's SMTP login worked.
func (s *Server) smtpWorks(sess *session) {
	a := sess.account
	if a.SendVia != config.SendViaAuto {
		return
	}
	s.gb.mu.Lock()
	st := s.autoStateLocked(a)
	back := st.onGraph
	if back {
		st.onGraph = false
		st.since = time.Now()
	}
	s.gb.mu.Unlock()
	if back {
		sess.log.Info("send_via = auto: SMTP AUTH works again for this account; back on SMTP")
		s.m.SendPathSwitches.WithLabelValues(a.Name, "smtp").Inc()
		s.m.SetSendPath(a.Name, "smtp")
		if ps, ok := s.opts.Tokens.(sendPathSetter); ok {
			ps.SetSendPath(a.Name, "smtp", "SMTP AUTH works again", time.Time{})
		}
	}
}

// graphMail opens a transaction on the Graph path. The Graph token is
// fetched now, so that a sign-in or consent problem is answered at MAIL
// (454) as on the SMTP path.
func (s *session) graphMail(why string) error {
	if _, werr := s.graphToken(s.log); werr != nil {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		return werr
	}
	s.gtx = &graphTx{why: why}
	return nil
}

func (s *session) graphToken(log *slog.Logger) (string, *smtp.SMTPError) {
	src := s.srv.graphTokens()
	if src == nil {
		log.Error("this account sends through Microsoft Graph, but the bridge has no Graph token source; this is a bug or a wiring problem")
		return "", failureReply(&frontdoor.Failure{Kind: frontdoor.Failing}, false)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.limits().UpstreamTimeout)
	defer cancel()
	tok, err := src.AccessToken(ctx, s.account.Name)
	if err == nil {
		return tok, nil
	}
	return "", s.tokenFailure(log, err)
}

// graphRcpt adds an envelope recipient. Graph has no envelope: the
// recipients reach it as header fields (fitRecipients).
func (s *session) graphRcpt(to string) error {
	if max := s.limits().MaxRecipients; max > 0 && len(s.gtx.rcpts) >= max {
		return errTooManyRcpts
	}
	for _, r := range s.gtx.rcpts {
		if strings.EqualFold(r, to) {
			return nil
		}
	}
	s.gtx.rcpts = append(s.gtx.rcpts, to)
	s.rcpts = append(s.rcpts, to)
	return nil
}

// Replies of the Graph path (Graph's own codes and messages go to the log
// and, shortened, into the reply text).
var (
	errSpool          = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "local spool error, message not delivered, try again later"}
	errGraphBusy      = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "too many concurrent Microsoft Graph submissions for this mailbox, try again later"}
	errGraphLost      = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Microsoft Graph did not answer, message not delivered, try again later"}
	errHeaderRefused  = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "a To, Cc or Bcc header cannot be parsed; Microsoft Graph takes the recipients from them"}
	errHeaderTooBig   = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message header too large"}
	errGraphAuthFixed = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Microsoft Graph refused the bridge's token for this mailbox; an administrator must act, see the bridge log"}
)

// graphData receives the body and submits it through Graph.
func (s *session) graphData(r io.Reader) error {
	tx := s.gtx
	s.gtx = nil // one DATA per transaction; Reset clears it too
	lim := s.limits()
	if s.tc != nil {
		s.tc.setInData(true, lim.ReadTimeout)
		defer s.tc.setInData(false, 0)
	}
	start := time.Now()
	f, err := s.spool()
	if err != nil {
		io.Copy(io.Discard, r)
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		s.log.Error("cannot create the spool file for the Graph path; client told to retry", "error", err.Error())
		return errSpool
	}
	defer f.Close()
	// Every line ends in CRLF, as on the SMTP path (newline.go); the MIME
	// splitting below relies on it too.
	norm := newCRLFReader(r)
	defer norm.release()
	src := &bodyReader{r: norm, limit: lim.MaxMessageBytes}
	n, err := io.Copy(f, src)
	s.bytesIn += n
	if err != nil {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		switch {
		case errors.Is(src.err, smtp.ErrDataTooLarge):
			s.log.Warn("message too large, not delivered", "from", s.from, "bytes_in", n, "limit", lim.MaxMessageBytes)
			return smtp.ErrDataTooLarge
		case src.err != nil:
			s.log.Warn("client stopped sending the message, not delivered", "from", s.from, "bytes_in", n, "error", src.err.Error())
			return errClientGone
		default:
			io.Copy(io.Discard, r)
			s.log.Error("cannot write the spool file for the Graph path; client told to retry", "error", err.Error())
			return errSpool
		}
	}
	if norm.fixed > 0 {
		s.log.Info("bare CR or LF in the message normalised to CRLF", "from", s.from, "count", norm.fixed)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		return errSpool
	}
	rh, err := fitRecipients(f, tx.rcpts)
	if err != nil {
		s.srv.m.SMTPMessages.WithLabelValues("refused").Inc()
		s.log.Warn("message refused on the Graph path", "from", s.from, "error", err.Error())
		if errors.Is(err, errHeaderTooLarge) {
			return errHeaderTooBig
		}
		return errHeaderRefused
	}
	if len(rh.stripped) > 0 {
		s.log.Info("header recipients that are not envelope recipients were removed: they must not receive the message", "removed", len(rh.stripped))
	}
	msg := &spooled{f: f, header: rh.header, bodyOff: rh.bodyOff, size: n}

	// Graph allows 4 concurrent requests per mailbox.
	mbKey := "graph:" + strings.ToLower(s.account.Mailbox)
	release, err := s.srv.gb.limiter.Acquire(s.ctx, mbKey, config.DefaultGraphConcurrency, lim.ConnectionWait)
	if err != nil {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		s.srv.m.UpstreamErrors.WithLabelValues("graph", "limit").Inc()
		s.log.Warn("per-mailbox Microsoft Graph concurrency limit reached; client told to retry", "limit", config.DefaultGraphConcurrency)
		return errGraphBusy
	}
	defer release()

	ctx, cancel := context.WithTimeout(s.ctx, graphSendTimeout)
	defer cancel()
	c := s.graphClient()
	method := "sendmail"
	if msg.len() <= graph.MaxMIMEBytes {
		err = c.SendMIME(ctx, s.account.Mailbox, msg.open, msg.len())
		if ge, ok := graph.AsError(err); ok && ge.Status == http.StatusRequestEntityTooLarge {
			// Graph's limit was lower than documented (reports start at
			// 2.2 MB): aim at half the refused size.
			s.log.Info("Microsoft Graph refused the message as too large (413); sending it as a draft with attachment uploads", "bytes", msg.len())
			method, err = "upload", s.sendLarge(ctx, c, msg, msg.len()/2)
		}
	} else {
		method, err = "upload", s.sendLarge(ctx, c, msg, graph.MaxMIMEBytes)
	}
	if err != nil {
		return s.graphFailure(method, err, n)
	}
	s.messages++
	s.srv.m.SMTPMessages.WithLabelValues("relayed").Inc()
	s.srv.m.GraphMessages.WithLabelValues(method, "sent").Inc()
	s.srv.m.BytesRelayed.WithLabelValues("smtp", "up").Add(float64(n))
	s.log.Info("message sent through Microsoft Graph", "from", s.from, "rcpts", len(tx.rcpts), "bytes_in", n,
		"method", method, "added_bcc", len(rh.added), "why", tx.why,
		"duration", time.Since(start).Round(time.Millisecond).String())
	return replyError(250, "2.0.0 OK: accepted by Microsoft Graph for delivery")
}

func (s *session) graphClient() *graph.Client {
	acct := s.account
	return graphmail.NewClient(acct.Provider.GraphURL, s.srv.graphHTTP(acct.Provider), acct.Name, s.srv.graphTokens())
}

// spool creates the unlinked spool file.
func (s *session) spool() (*os.File, error) {
	dir := os.TempDir()
	if s.cfg != nil && s.cfg.StateDir != "" {
		d := filepath.Join(s.cfg.StateDir, SpoolDirName)
		if err := os.MkdirAll(d, 0o700); err == nil {
			dir = d
		}
	}
	f, err := os.CreateTemp(dir, "graph-spool-*")
	if err != nil {
		return nil, err
	}
	// Unlinked at once: the data lives only as long as f is open.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// spooled is a received message: the rewritten header plus the original
// body from the spool file.
type spooled struct {
	f       *os.File
	header  []byte
	bodyOff int64
	size    int64
}

func (m *spooled) len() int64 { return int64(len(m.header)) + m.size - m.bodyOff }

func (m *spooled) open() (io.Reader, error) {
	return io.MultiReader(strings.NewReader(string(m.header)), io.NewSectionReader(m.f, m.bodyOff, m.size-m.bodyOff)), nil
}

// tokenFailure logs a Graph token error and maps it to the reply through
// the front door's Failure, as session.token does.
func (s *session) tokenFailure(log *slog.Logger, err error) *smtp.SMTPError {
	f := frontdoor.TokenFailure(s.account.Name, err)
	logTokenFailure(log, f, "graph")
	return failureReply(f, false)
}

// graphFailure logs a failed Graph submission and returns the reply.
// Nothing here answers 250; a message that may have been delivered gets a
// 4xx (a possible duplicate is better than a loss).
func (s *session) graphFailure(method string, err error, n int64) error {
	log := s.log.With("from", s.from, "bytes_in", n, "method", method)
	var te *tokens.Error
	if errors.As(err, &te) {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		s.srv.m.GraphMessages.WithLabelValues(method, "failed").Inc()
		return s.tokenFailure(log, err)
	}
	var tre *graph.TransportError
	if errors.As(err, &tre) {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		s.srv.m.GraphMessages.WithLabelValues(method, "failed").Inc()
		s.srv.m.UpstreamErrors.WithLabelValues("graph", errorClass(err)).Inc()
		if tre.Sent {
			log.Warn("no answer from Microsoft Graph after the message was sent; the client will retry (possible duplicate)", "error", err.Error())
		} else {
			log.Warn("Microsoft Graph unreachable; client told to retry", "error", err.Error())
		}
		return errGraphLost
	}
	if errors.Is(err, errTooLargeForGraph) || errors.Is(err, errCannotSplit) {
		s.srv.m.SMTPMessages.WithLabelValues("refused").Inc()
		s.srv.m.GraphMessages.WithLabelValues(method, "refused").Inc()
		log.Warn("message cannot be sent through Microsoft Graph", "error", err.Error())
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message too large for Microsoft Graph: " + err.Error()}
	}
	ge, ok := graph.AsError(err)
	if !ok {
		s.srv.m.SMTPMessages.WithLabelValues("failed").Inc()
		s.srv.m.GraphMessages.WithLabelValues(method, "failed").Inc()
		log.Error("Microsoft Graph submission failed; client told to retry", "error", err.Error())
		return errGraphLost
	}
	reply := graphReply(ge, s.account)
	attrs := []any{"graph_status", ge.Status, "graph_code", ge.Code, "graph_message", ge.Message, "request_id", ge.RequestID, "reply", codeString(reply)}
	result := "failed"
	if reply.Code/100 == 5 {
		result = "refused"
	}
	s.srv.m.SMTPMessages.WithLabelValues(result).Inc()
	s.srv.m.GraphMessages.WithLabelValues(method, result).Inc()
	switch {
	case ge.Temporary():
		s.srv.m.UpstreamErrors.WithLabelValues("graph", "throttled").Inc()
		log.Warn("Microsoft Graph is throttling or unavailable; client told to retry", attrs...)
	case ge.IsODataDisabled():
		log.Error(fmt.Sprintf("Microsoft Graph refused access to %s: an application access policy or RBAC for Applications scope of the tenant excludes this mailbox. "+
			"An Exchange administrator adds the mailbox to the scope: with RBAC for Applications, 'New-ManagementRoleAssignment -Role \"Application Mail.Send\" -App %s -CustomResourceScope <scope containing %s>' "+
			"(and 'Application Mail.ReadWrite' for messages over 3 MB); with a legacy policy, add the mailbox to the group of 'New-ApplicationAccessPolicy -AppId %s -PolicyScopeGroupId <group> -AccessRight RestrictAccess'. "+
			"Changes can take up to an hour.", s.account.Mailbox, s.account.Provider.ClientID, s.account.Mailbox, s.account.Provider.ClientID), attrs...)
	case ge.Code == graph.CodeSendAsDenied:
		log.Warn(fmt.Sprintf("Microsoft Graph refused the sender: the signed-in identity may not send as the From address. An Exchange administrator grants it with 'Add-RecipientPermission -Identity <From address> -Trustee %s -AccessRights SendAs' (or Send on Behalf), or the client uses %s as From", s.account.LoginHint(), s.account.Mailbox), attrs...)
	case ge.Code == graph.CodeMailboxNotEnabled:
		log.Error(fmt.Sprintf("Microsoft Graph says the mailbox %s is not enabled for the REST API: it is inactive, soft-deleted or hosted on-premises. Check the mailbox in the Exchange admin center; an on-premises mailbox cannot send through Graph (use send_via = \"smtp\")", s.account.Mailbox), attrs...)
	case ge.Status == http.StatusUnauthorized:
		log.Error("Microsoft Graph rejected the access token even after a refresh (wrong audience or revoked); check that the app registration has the Microsoft Graph permission Mail.Send with consent, then run 'oauthbridge login "+s.account.Name+"'", attrs...)
	case ge.Status == http.StatusForbidden:
		log.Error("Microsoft Graph refused the request: the token lacks a permission or the tenant blocks it. Check the Microsoft Graph permissions Mail.Send (and Mail.ReadWrite for messages over 3 MB; Mail.Send.Shared for a shared mailbox or send_as) with consent", attrs...)
	default:
		log.Warn("Microsoft Graph refused the message", attrs...)
	}
	return reply
}

// graphReply maps a Graph error to the SMTP reply.
func graphReply(ge *graph.Error, a *config.Account) *smtp.SMTPError {
	detail := ge.Code
	if ge.Message != "" {
		if detail != "" {
			detail += ": "
		}
		detail += oneLine(ge.Message, 160)
	}
	switch {
	case ge.Status/100 == 2:
		// Only 202 is success; another 2xx may or may not have sent it.
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: fmt.Sprintf("unexpected answer from Microsoft Graph (HTTP %d instead of 202), try again later", ge.Status)}
	case ge.Status == http.StatusTooManyRequests:
		msg := "Microsoft Graph is throttling this mailbox, try again later"
		if ge.RetryAfter > 0 {
			msg = fmt.Sprintf("Microsoft Graph is throttling this mailbox, try again in %d seconds", int(ge.RetryAfter.Round(time.Second)/time.Second))
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: msg}
	case ge.Status >= 500:
		msg := fmt.Sprintf("Microsoft Graph is unavailable (HTTP %d), try again later", ge.Status)
		if ge.RetryAfter > 0 {
			msg = fmt.Sprintf("Microsoft Graph is unavailable (HTTP %d), try again in %d seconds", ge.Status, int(ge.RetryAfter.Round(time.Second)/time.Second))
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: msg}
	case ge.Code == graph.CodeSendAsDenied:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SendAsDenied; not allowed to send as the From address; " + detail}
	case ge.IsODataDisabled():
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "the tenant's application access policy excludes this mailbox from Microsoft Graph; an administrator must act, see the bridge log"}
	case ge.Code == graph.CodeMailboxNotEnabled:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "mailbox " + a.Mailbox + " is not enabled for Microsoft Graph (inactive, soft-deleted or on-premises); see the bridge log"}
	case ge.Status == http.StatusRequestEntityTooLarge, ge.Code == "ErrorMessageSizeExceeded":
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message too large for this mailbox (Microsoft Graph: " + detail + ")"}
	case ge.Status == http.StatusUnauthorized:
		return errGraphAuthFixed
	case ge.Status == http.StatusForbidden:
		return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Microsoft Graph refused the request (" + detail + "); an administrator must act, see the bridge log"}
	case ge.Status == http.StatusNotFound:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "Microsoft Graph: " + detail}
	default:
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Microsoft Graph refused the message: " + detail}
	}
}

// oneLine makes Graph's message safe for one SMTP reply line.
func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r > 0x7e {
			return ' '
		}
		return r
	}, s)
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strings.TrimSpace(s)
}

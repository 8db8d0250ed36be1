package doctor

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/tokens"
)

func (r *run) checkConfig() {
	a, p := r.a, r.p
	c := Check{ID: "config", Name: "configuration"}
	who := "sign-in as " + a.LoginHint()
	if a.Flow == config.FlowApp {
		who = "app flow (client credentials)"
	}
	sendVia := a.SendVia
	if sendVia == "" {
		sendVia = config.SendViaSMTP
	}
	if err := r.opts.SecretsError; err != nil {
		c.Status = Fail
		c.Detail = "the configuration's secrets cannot be read here: " + firstLine(err.Error())
		c.Meaning = "without the client secret (or the token store key) this process cannot get a token, so the checks that need one are skipped"
		c.Fix = []string{
			"run it as root, which reads the credentials the service gets (" + config.DefaultCredentialsDir + "), or give -credentials DIR",
			"or start the service (systemctl start oauthbridge): doctor then runs inside it and needs no secret here",
		}
		r.add(c)
		return
	}
	c.Status = Pass
	c.Detail = fmt.Sprintf("mailbox %s, %s, send_via = %s; provider %s: tenant %s, client_id %s", a.Mailbox, who, sendVia, p.Name, p.Tenant, p.ClientID)
	r.add(c)
}

// hostOf returns the host of a "host:port" or URL.
func hostOf(s string) string {
	if u, err := url.Parse(s); err == nil && u.Host != "" {
		s = u.Host
	}
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	return s
}

var aadstsRE = regexp.MustCompile(`AADSTS(\d+)`)

func (r *run) checkReach() {
	c := Check{ID: "reach", Name: "Microsoft reachable (DNS, TLS, clock)"}
	ctx, cancel := r.checkCtx()
	defer cancel()
	p := r.p
	// DNS of every server the account uses.
	servers := []string{p.Authority, p.IMAPServer, p.POP3Server}
	if r.sendsSMTP() {
		servers = append(servers, p.SMTPServer)
	}
	if r.a.UsesGraph() {
		servers = append(servers, p.GraphURL)
	}
	seen := map[string]bool{}
	var resolved, notes []string
	for _, s := range servers {
		h := hostOf(s)
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if net.ParseIP(h) != nil {
			continue
		}
		addrs, err := r.opts.Resolver.LookupHost(ctx, h)
		if err != nil {
			c.Status = Fail
			c.Detail = fmt.Sprintf("cannot resolve %s: %v", h, err)
			c.Meaning = "this host's DNS does not resolve a Microsoft 365 server name, so nothing can reach it"
			c.Fix = []string{"check /etc/resolv.conf (resolvectl status) and that " + h + " resolves: getent hosts " + h, "check the server names of provider " + p.Name + " (authority, imap_server, pop3_server, smtp_server, graph_url)"}
			r.add(c)
			return
		}
		resolved = append(resolved, fmt.Sprintf("%s (%d address(es))", h, len(addrs)))
	}
	if len(resolved) > 0 {
		notes = append(notes, "resolved "+strings.Join(resolved, ", "))
	}

	// TLS and clock: the tenant's OpenID configuration document (Google:
	// the identity platform's one discovery document).
	u := strings.TrimSuffix(p.Authority, "/") + "/" + url.PathEscape(p.Tenant) + "/v2.0/.well-known/openid-configuration"
	if p.IsGoogle() {
		u = strings.TrimSuffix(p.Authority, "/") + "/.well-known/openid-configuration"
	}
	hc := r.httpClient()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		r.add(c)
		return
	}
	t0 := r.opts.Now()
	resp, err := hc.Do(req)
	t1 := r.opts.Now()
	if err != nil {
		c.Status = Fail
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		c.Detail = fmt.Sprintf("GET %s: %v", u, err)
		var cv *tls.CertificateVerificationError
		var ua x509.UnknownAuthorityError
		if errors.As(err, &cv) || errors.As(err, &ua) {
			c.Meaning = "the identity platform's TLS certificate is not trusted here (a TLS-inspecting proxy or firewall, or a missing CA)"
			c.Fix = []string{"install the inspecting proxy's CA in the system store (update-ca-certificates) or set ca_file of provider " + p.Name + " to it"}
		} else {
			c.Meaning = "the identity platform cannot be reached from this host"
			c.Fix = []string{"check the firewall (outbound TCP 443 to " + hostOf(p.Authority) + ") and any HTTP proxy (HTTPS_PROXY)"}
		}
		r.add(c)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.TLS != nil {
		notes = append(notes, "TLS to "+hostOf(p.Authority)+" verified")
	} else {
		notes = append(notes, "plain HTTP to "+hostOf(p.Authority)+" (a test authority: no TLS)")
	}
	if d := resp.Header.Get("Date"); d != "" {
		if st, err := http.ParseTime(d); err == nil {
			mid := t0.Add(t1.Sub(t0) / 2)
			skew := st.Sub(mid)
			// The Date header has a resolution of one second.
			if skew.Abs() > r.opts.MaxClockSkew {
				c.Status = Fail
				local := "behind"
				if skew < 0 {
					local = "ahead of"
				}
				c.Detail = fmt.Sprintf("this host's clock is %s %s %s's (its Date header: %s); more than %s", skew.Abs().Round(time.Second), local, hostOf(p.Authority), d, r.opts.MaxClockSkew)
				c.Meaning = "tokens carry validity times (nbf, exp): with a clock this far off the bridge refreshes at the wrong time and Microsoft refuses client assertions (AADSTS700024)"
				c.Fix = []string{"timedatectl status (look for 'System clock synchronized: yes')", "timedatectl set-ntp true (systemd-timesyncd), or: apt-get install chrony && chronyc tracking"}
				r.add(c)
				return
			}
			notes = append(notes, fmt.Sprintf("clock within %s of the server's", skew.Abs().Round(time.Second)))
		}
	}
	if resp.StatusCode != http.StatusOK {
		c.Status = Fail
		c.Detail = fmt.Sprintf("GET %s: HTTP %s", u, resp.Status)
		if m := aadstsRE.FindSubmatch(body); m != nil {
			code, _ := strconv.Atoi(string(m[1]))
			c.AADSTS = code
			if reason, fix, ok := tokens.Describe(r.a, code); ok {
				c.Meaning, c.Fix = reason, []string{fix}
			}
		}
		if c.Meaning == "" {
			c.Meaning = "the identity platform does not know this tenant or authority"
			c.Fix = []string{"check tenant (GUID or domain), cloud and authority of provider " + p.Name}
		}
		r.add(c)
		return
	}
	c.Status = Pass
	c.Detail = strings.Join(notes, "; ")
	r.add(c)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func kindMeaning(k tokens.Kind) string {
	switch k {
	case tokens.NeedsLogin:
		return "a person must sign in (again) before the bridge can work"
	case tokens.Failing:
		return "the app registration or the configuration is wrong; an administrator must fix it"
	}
	return "a temporary problem (network, throttling, an outage): the bridge retries by itself"
}

func (r *run) tokenCheck(res tokens.Resource, id, name string) string {
	c := Check{ID: id, Name: name}
	if r.opts.SecretsError != nil || r.opts.Tokens == nil {
		c.Status, c.Detail = Skip, "needs the configuration's secrets (see config)"
		r.add(c)
		return ""
	}
	ctx, cancel := r.checkCtx()
	defer cancel()
	tok, err := r.opts.Tokens.For(res).AccessToken(ctx, r.a.Name)
	if err == nil {
		c.Status, c.Detail = Pass, "access token obtained"
		if res == tokens.Graph {
			c.Detail += "; the Graph permissions for send_via = " + quote(r.a.SendVia) + " are consented (Graph checks Send As and the mailbox only when a message is sent)"
		}
		r.add(c)
		return tok
	}
	c.Status = Fail
	var te *tokens.Error
	if errors.As(err, &te) {
		c.Detail, c.AADSTS = te.Reason, te.AADSTS
		if te.AADSTS != 0 {
			c.Detail += fmt.Sprintf(" (AADSTS%d)", te.AADSTS)
		}
		c.Meaning = kindMeaning(te.Kind)
		switch te.AADSTS {
		case 65001, 65004, 90094:
			c.Meaning = "the app registration has no consent for these permissions in this tenant: an administrator grants it, then the account is signed in again"
			if r.a.Flow == config.FlowApp {
				c.Meaning = "the app registration has no admin consent for these permissions in this tenant"
			}
		}
		c.Fix = r.tokenFix(te)
	} else {
		c.Detail = err.Error()
		c.Meaning = kindMeaning(tokens.Temporary)
	}
	r.add(c)
	return ""
}

func (r *run) checkTokens() {
	r.outlook = r.tokenCheck(tokens.Outlook, "token-outlook", "token for Exchange Online (IMAP, POP3, SMTP)")
	if r.a.UsesGraph() {
		r.graph = r.tokenCheck(tokens.Graph, "token-graph", "token for Microsoft Graph (send_via = "+quote(r.a.SendVia)+")")
	}
}

// dialFailure fills c for a connection that could not be made to server.
func dialFailure(c *Check, server, attr, provider string, err error) {
	c.Status = Fail
	c.Detail = fmt.Sprintf("%s: %v", server, err)
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		c.Meaning = "the server's TLS certificate is not trusted here (a TLS-inspecting firewall, or a wrong server name)"
		c.Fix = []string{"check " + attr + " of provider " + provider + " and its ca_file"}
		return
	}
	c.Meaning = "no connection to the server"
	c.Fix = []string{"check the firewall (outbound TCP to " + server + ") and " + attr + " of provider " + provider}
}

package doctor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graph"
)

// httpClient is the client of the account's HTTPS checks (identity
// platform, Graph): Options.HTTPClient, else one graph.NewHTTPClient
// trusting the provider's RootCAs for all the account's checks.
func (r *run) httpClient() *http.Client {
	if r.opts.HTTPClient != nil {
		return r.opts.HTTPClient
	}
	if r.hc == nil {
		r.hc = graph.NewHTTPClient(r.p.RootCAs)
	}
	return r.hc
}

// checkGraph reads the mailbox's Drafts folder through Microsoft Graph with
// the account's Graph token: the permission check of an account that
// sends through Graph, without sending. It finds an application access
// policy or RBAC scope that excludes the mailbox, a mailbox Graph cannot
// reach (on-premises, inactive), a delegate without FullAccess and a
// missing Mail.ReadWrite (which the bridge needs for messages over 3 MB).
// Send As is checked by Graph only when a message is sent.
func (r *run) checkGraph() {
	if !r.a.UsesGraph() {
		return
	}
	c := Check{ID: "graph", Name: "Microsoft Graph mailbox access (nothing sent)"}
	if r.graph == "" {
		c.Status, c.Detail = Skip, "needs a Microsoft Graph token (see token-graph)"
		r.add(c)
		return
	}
	ctx, cancel := r.checkCtx()
	defer cancel()
	base := strings.TrimSuffix(r.p.GraphURL, "/")
	if base == "" {
		base = config.DefaultGraphURL
	}
	u := base + "/v1.0/users/" + url.PathEscape(r.a.Mailbox) + "/mailFolders/drafts?$select=displayName,totalItemCount"
	hc := r.httpClient()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		r.add(c)
		return
	}
	req.Header.Set("Authorization", "Bearer "+r.graph)
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL carries no token; the header does
		}
		dialFailure(&c, hostOf(base), "graph_url", r.p.Name, err)
		r.add(c)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	var ok struct {
		TotalItemCount int `json:"totalItemCount"`
	}
	var ge struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &ok) == nil {
		c.Status = Pass
		c.Detail = fmt.Sprintf("GET /v1.0/users/%s/mailFolders/drafts: %d item(s) (Graph checks Send As only when a message is sent)", r.a.Mailbox, ok.TotalItemCount)
		r.add(c)
		return
	}
	_ = json.Unmarshal(body, &ge)
	c.Status = Fail
	c.Upstream = fmt.Sprintf("HTTP %d %s: %s", resp.StatusCode, ge.Error.Code, ge.Error.Message)
	c.Detail = fmt.Sprintf("Graph refused to open mailbox %s", r.a.Mailbox)
	mb, app := r.a.Mailbox, r.a.Flow == config.FlowApp
	switch {
	case resp.StatusCode == http.StatusForbidden && strings.Contains(ge.Error.Message, "OData is disabled"):
		c.Meaning = fmt.Sprintf("an application access policy (or RBAC for Applications scope) keeps app %s out of mailbox %s", r.p.ClientID, mb)
		c.Fix = []string{psPrefix,
			fmt.Sprintf("Test-ApplicationAccessPolicy -Identity %s -AppId %s", mb, r.p.ClientID),
			"then add the mailbox to the group the policy names (or change the management scope of the app's role assignment)"}
	case resp.StatusCode == http.StatusForbidden && app:
		c.Meaning = "the app registration has no admin-consented Microsoft Graph application permission Mail.ReadWrite, which the bridge needs for messages over 3 MB (drafts and upload sessions)"
		c.Fix = []string{"in Entra: App registrations > the app of provider " + r.p.Name + " > API permissions > Add a permission > Microsoft Graph > Application permissions: Mail.Send and Mail.ReadWrite, then Grant admin consent", "admin-consent URL (a tenant administrator opens it): " + r.consentURL()}
	case resp.StatusCode == http.StatusForbidden && r.needsFullAccess():
		c.Meaning = fmt.Sprintf("Graph does not let %s into mailbox %s: it has no FullAccess on it", r.identity(), mb)
		c.Fix = r.fullAccessFix()
	case resp.StatusCode == http.StatusForbidden:
		c.Meaning = "the Graph token lacks Mail.ReadWrite, which the bridge needs for messages over 3 MB"
		c.Fix = []string{fmt.Sprintf("grant consent for Mail.ReadWrite (admin-consent URL: %s), then run 'oauthbridge login %s'", r.consentURL(), r.a.Name)}
	case resp.StatusCode == http.StatusNotFound && ge.Error.Code == "MailboxNotEnabledForRESTAPI":
		c.Meaning = fmt.Sprintf("mailbox %s is inactive, soft-deleted or on-premises: Microsoft Graph cannot send from it", mb)
		c.Fix = []string{fmt.Sprintf("set send_via = \"smtp\" in account %s, or move the mailbox to Exchange Online", r.a.Name)}
	case resp.StatusCode == http.StatusNotFound:
		c.Meaning = fmt.Sprintf("Graph knows no user %s in this tenant", mb)
		c.Fix = []string{fmt.Sprintf("check mailbox of account %s (its primary SMTP address or UPN) and tenant of provider %s", r.a.Name, r.p.Name)}
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		c.Meaning = "a temporary refusal (throttling or an outage)"
		c.Fix = []string{fmt.Sprintf("run 'oauthbridge doctor %s' again later", r.a.Name)}
	default:
		c.Meaning = "Microsoft Graph refused the request"
		c.Fix = []string{"see the reply above"}
	}
	r.add(c)
}

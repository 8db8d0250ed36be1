package alerts

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
)

// job is one alert on its way through one channel, with the channel's
// settings as they were when the alert was raised.
type job struct {
	alert Alert
	// webhook
	url     string
	redact  string // scheme://host, for logs
	headers map[string]string
	body    []byte
	// email
	sender *config.Account
	rcpts  []string
	msg    []byte
}

// dispatch queues a for each configured channel. It never blocks.
func (e *Engine) dispatch(cfg *config.Config, a Alert) {
	ac := cfg.Alerts
	if ac.WebhookURL != "" {
		body, err := json.Marshal(e.payload(cfg, a))
		if err != nil {
			e.log.Error("alerts: cannot encode the webhook payload", "error", err)
		} else {
			e.enqueue("webhook", e.webhookQ, job{alert: a, url: ac.WebhookURL, redact: ac.WebhookRedacted, headers: ac.Headers, body: body})
		}
	}
	if len(ac.Recipients) > 0 && ac.Sender != nil {
		switch {
		case e.opts.Sender == nil:
			e.log.Error("alerts: email_to is set but this bridge has no sender for alert mail; the alert is only logged", "condition", string(a.Condition), "account", a.Account)
			e.event(Event{Kind: "skipped", Channel: "email", Alert: a})
		case a.State == Firing && a.Account == ac.Sender.Name && a.Condition != GraphFallback:
			// The account that would send the mail is the one broken.
			if ac.WebhookURL != "" {
				e.log.Warn("alerts: this alert is about email_account itself, which cannot send mail now; it goes to the webhook only",
					"condition", string(a.Condition), "email_account", ac.Sender.Name)
			} else {
				e.log.Error("alerts: this alert is about email_account itself, which cannot send mail now, and no webhook_url is configured: only this log line carries it; configure a webhook_url or another email_account",
					"condition", string(a.Condition), "email_account", ac.Sender.Name, "message", a.Message, "fix", a.Fix)
			}
			e.event(Event{Kind: "skipped", Channel: "email", Alert: a})
		default:
			e.enqueue("email", e.emailQ, job{alert: a, sender: ac.Sender, rcpts: ac.Recipients, msg: e.mail(ac.Sender, ac.Recipients, a)})
		}
	}
}

func (e *Engine) enqueue(channel string, q chan job, j job) {
	select {
	case q <- j:
	default:
		e.log.Error("alerts: the "+channel+" queue is full (the receiver is down or slow); alert dropped, it is in this log line only",
			"queue_size", cap(q), "condition", string(j.alert.Condition), "state", string(j.alert.State), "account", j.alert.Account, "message", j.alert.Message)
		e.event(Event{Kind: "dropped", Channel: channel, Alert: j.alert})
	}
}

// worker delivers the channel's jobs one after the other, each with
// retries and exponential backoff.
func (e *Engine) worker(ctx context.Context, channel string, q chan job) {
	for {
		var j job
		select {
		case <-ctx.Done():
			return
		case j = <-q:
		}
		wait := e.opts.RetryMin
		for attempt := 1; ; attempt++ {
			var err error
			var permanent bool
			if channel == "webhook" {
				permanent, err = e.postWebhook(ctx, j)
			} else {
				err = e.sendMail(ctx, j)
			}
			if err == nil {
				e.log.Info("alerts: delivered", "channel", channel, "condition", string(j.alert.Condition), "state", string(j.alert.State), "account", j.alert.Account, "attempt", attempt)
				e.event(Event{Kind: "delivered", Channel: channel, Alert: j.alert, Attempt: attempt})
				break
			}
			if ctx.Err() != nil {
				return
			}
			if permanent || attempt >= e.opts.MaxAttempts {
				e.log.Error("alerts: delivery failed for good; the alert is in this log line only", "channel", channel, "attempts", attempt,
					"error", err.Error(), "condition", string(j.alert.Condition), "state", string(j.alert.State), "account", j.alert.Account, "message", j.alert.Message, "fix", j.alert.Fix)
				e.event(Event{Kind: "failed", Channel: channel, Alert: j.alert, Attempt: attempt, Err: err})
				break
			}
			e.log.Warn("alerts: delivery failed; retrying", "channel", channel, "attempt", attempt, "retry_in", wait.String(), "error", err.Error())
			e.event(Event{Kind: "retry", Channel: channel, Alert: j.alert, Attempt: attempt, Err: err})
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			wait = min(wait*2, e.opts.RetryMax)
		}
	}
}

// postWebhook posts one alert. A 2xx is success; 408, 429 and 5xx are
// retried, other 4xx are not (the receiver will not accept it later).
// Errors never contain the URL (its path or query may be a secret).
func (e *Engine) postWebhook(ctx context.Context, j job) (permanent bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.WebhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, j.url, bytes.NewReader(j.body))
	if err != nil {
		return true, fmt.Errorf("webhook %s: cannot build the request", j.redact)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "oauthbridge-alerts")
	for k, v := range j.headers {
		req.Header.Set(k, v)
	}
	resp, err := e.opts.HTTPClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // *url.Error prints the whole URL
		}
		if ctx.Err() == context.DeadlineExceeded {
			return false, fmt.Errorf("webhook %s: no answer within %s", j.redact, e.opts.WebhookTimeout)
		}
		return false, fmt.Errorf("webhook %s: %v", j.redact, err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 == 2 {
		return false, nil
	}
	err = fmt.Errorf("webhook %s answered %s: %s", j.redact, resp.Status, oneLine(string(snippet)))
	retry := resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout
	return !retry, err
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func (e *Engine) sendMail(ctx context.Context, j job) error {
	ctx, cancel := context.WithTimeout(ctx, e.opts.EmailTimeout)
	defer cancel()
	err := e.opts.Sender.Send(ctx, j.sender, j.sender.Mailbox, j.rcpts, j.msg)
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("e-mail through account %s: no answer within %s: %w", j.sender.Name, e.opts.EmailTimeout, err)
	}
	if err != nil {
		return fmt.Errorf("e-mail through account %s: %w", j.sender.Name, err)
	}
	return nil
}

// Payload is the webhook's JSON body. text serves the chat incoming
// webhooks (Teams, Slack, Mattermost); the Alertmanager fields (version 4)
// serve receivers written for Alertmanager; the flat fields are for
// scripts.
type Payload struct {
	Text      string    `json:"text"`
	Account   string    `json:"account,omitempty"`
	Mailbox   string    `json:"mailbox,omitempty"`
	Provider  string    `json:"provider,omitempty"`
	Condition Condition `json:"condition"`
	State     State     `json:"state"`
	Severity  string    `json:"severity"`
	Message   string    `json:"message"`
	Fix       string    `json:"fix,omitempty"`
	Host      string    `json:"host"`
	StartsAt  time.Time `json:"starts_at"`
	EndsAt    time.Time `json:"ends_at,omitzero"`

	// Alertmanager webhook format, version 4.
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	Status            State             `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []AMAlert         `json:"alerts"`
}

// AMAlert is one alert in Alertmanager's webhook format.
type AMAlert struct {
	Status       State             `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

func (e *Engine) payload(cfg *config.Config, a Alert) Payload {
	labels := map[string]string{"alertname": a.Condition.alertName(), "condition": string(a.Condition), "severity": a.Severity, "instance": e.host}
	if a.Account != "" {
		labels["account"] = a.Account
	}
	if a.Provider != "" {
		labels["provider"] = a.Provider
	}
	ann := map[string]string{"summary": summary(a), "description": a.Message}
	if a.Fix != "" {
		ann["fix"] = a.Fix
	}
	ext := ""
	if cfg.Admin != nil {
		ext = cfg.Admin.PublicURL
	}
	return Payload{
		Text: text(e.host, a), Account: a.Account, Mailbox: a.Mailbox, Provider: a.Provider,
		Condition: a.Condition, State: a.State, Severity: a.Severity, Message: a.Message, Fix: a.Fix,
		Host: e.host, StartsAt: a.StartsAt, EndsAt: a.EndsAt,
		Version: "4", GroupKey: "oauthbridge/" + a.Key, Status: a.State, Receiver: "oauthbridge",
		GroupLabels: map[string]string{"alertname": labels["alertname"]}, CommonLabels: labels, CommonAnnotations: ann,
		ExternalURL: ext,
		Alerts: []AMAlert{{Status: a.State, Labels: labels, Annotations: ann, StartsAt: a.StartsAt, EndsAt: a.EndsAt,
			GeneratorURL: ext, Fingerprint: a.Key}},
	}
}

func summary(a Alert) string {
	subject := a.Account
	if subject == "" {
		subject = "provider " + a.Provider
	}
	return fmt.Sprintf("%s: %s", subject, strings.ReplaceAll(string(a.Condition), "_", " "))
}

// text is the one-message rendering for chat webhooks and the mail body's
// first line.
func text(host string, a Alert) string {
	s := fmt.Sprintf("[%s] oauthbridge on %s: %s", strings.ToUpper(string(a.State)), host, a.Message)
	if a.Fix != "" {
		s += "\nFix: " + a.Fix
	}
	return s
}

// mail renders the alert as a plain-text message from the sending
// account's mailbox.
func (e *Engine) mail(from *config.Account, to []string, a Alert) []byte {
	var b bytes.Buffer
	subj := fmt.Sprintf("[oauthbridge %s] %s", strings.ToUpper(string(a.State)), summary(a))
	id := make([]byte, 12)
	rand.Read(id)
	fmt.Fprintf(&b, "From: oauthbridge <%s>\r\n", from.Mailbox)
	fmt.Fprintf(&b, "To: %s\r\n", strings.Join(to, ", "))
	fmt.Fprintf(&b, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", subj))
	fmt.Fprintf(&b, "Date: %s\r\n", e.opts.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%s.alert@%s>\r\n", hex.EncodeToString(id), domainOf(from.Mailbox))
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\nAuto-Submitted: auto-generated\r\n")
	fmt.Fprintf(&b, "X-Oauthbridge-Alert: %s %s %s\r\n\r\n", a.Condition, a.State, a.Key)
	qp := quotedprintable.NewWriter(&b)
	body := text(e.host, a) + "\n\n"
	if a.Account != "" {
		body += fmt.Sprintf("Account: %s (%s)\n", a.Account, a.Mailbox)
	}
	if a.Provider != "" {
		body += "Provider: " + a.Provider + "\n"
	}
	body += fmt.Sprintf("Condition: %s (%s)\nSince: %s\n", a.Condition, a.Severity, a.StartsAt.UTC().Format(time.RFC3339))
	if !a.EndsAt.IsZero() {
		body += "Cleared: " + a.EndsAt.UTC().Format(time.RFC3339) + "\n"
	}
	body += "\n`oauthbridge status` on the bridge shows every account's state.\n"
	qp.Write([]byte(strings.ReplaceAll(body, "\n", "\r\n")))
	qp.Close()
	b.WriteString("\r\n")
	return b.Bytes()
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return "oauthbridge.invalid"
}

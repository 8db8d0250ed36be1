// Package alerts tells an administrator that something needs a person
// before the mail stops: an account that needs a sign-in, a token refresh
// failing for a while, a client secret or certificate about to expire, an
// account that fell back to Microsoft Graph, upstream logins failing
// repeatedly.
//
// An Engine evaluates these conditions from the token manager's status (and
// the login attempts the proxies report) once right after the start, when
// the token manager's first refresh round has answered, then on every
// check interval and on demand. Each condition, keyed by condition and subject (account or
// credential), is announced once when it starts ("firing") and once when it
// clears ("resolved"); the state lives in the Engine, so a configuration
// reload keeps it, and in state_dir/alerts.json across restarts.
//
// Delivery is asynchronous: a bounded queue per channel and one worker
// each, every attempt with a timeout and retries with exponential backoff.
// A failing or hanging webhook or mail server never blocks a login, a
// message or a token refresh; when a queue is full the alert is dropped and
// logged. Channels: a JSON webhook (Teams, Slack, Mattermost, Alertmanager
// style receivers) and e-mail sent through one of the bridge's own accounts
// by the SMTP proxy's upstream path (the alerts package never speaks
// OAuth). No log line carries a token, a password, a webhook header or the
// webhook URL's path or query.
package alerts

package config

import "log/slog"

// Secret is a string that must never reach a log line, an error message or a
// status page. Its String, GoString and LogValue methods all return REDACTED;
// use Reveal where the value is really needed (a token request, a bcrypt
// comparison).
type Secret string

// Redacted is what a Secret prints as.
const Redacted = "REDACTED"

// Reveal returns the secret value itself.
func (s Secret) Reveal() string { return string(s) }

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return Redacted
}

// GoString implements fmt.GoStringer, so %#v redacts too.
func (s Secret) GoString() string { return s.String() }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText keeps secrets out of JSON and other text encodings.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

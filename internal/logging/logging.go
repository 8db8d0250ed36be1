// Package logging builds oauthbridge's log/slog logger: JSON when stderr is
// not a terminal (journald, files), text on a terminal, or as log_format
// says. Keys are fixed across the code base: proto, conn, remote, user,
// account, mailbox, upstream, bytes_in, bytes_out, duration, error, aadsts.
package logging

import (
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/term"
)

// New returns a logger writing to w in format ("auto", "json" or "text") at
// level ("debug", "info", "warn" or "error").
func New(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	switch level {
	case "debug":
		lv = slog.LevelDebug
	case "warn":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "auto" || format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

var connSeq atomic.Uint64

// ConnID returns a short process-unique connection id for the conn key.
func ConnID() string { return strconv.FormatUint(connSeq.Add(1), 36) }

// Discard is a logger that drops everything.
var Discard = slog.New(slog.DiscardHandler)

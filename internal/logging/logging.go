// Package logging builds oauthbridge's log/slog logger: JSON when stderr is
// not a terminal (journald, files), text on a terminal, or as log_format
// says. Keys are fixed across the code base: proto, conn, remote, user,
// account, mailbox, upstream, bytes_in, bytes_out, duration, error, aadsts.
package logging

import (
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
)

// New returns a logger writing to w in format ("auto", "json" or "text") at
// level ("debug", "info", "warn" or "error"). ControlOf(logger) changes both
// later (reload).
func New(w io.Writer, format, level string) *slog.Logger {
	l, _ := NewControlled(w, format, level)
	return l
}

var connSeq atomic.Uint64

// ConnID returns a short process-unique connection id for the conn key.
func ConnID() string { return strconv.FormatUint(connSeq.Add(1), 36) }

// Discard is a logger that drops everything.
var Discard = slog.New(slog.DiscardHandler)

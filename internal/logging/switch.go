package logging

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/term"
)

// Control changes a logger's level and format while it runs (a reload):
// every logger derived from it (With, WithGroup) follows, including those
// already handed to connections.
type Control struct {
	w     io.Writer
	level slog.LevelVar

	mu     sync.Mutex
	format string // "json" or "text", resolved
	base   atomic.Pointer[baseHandler]
}

// baseHandler is one format's handler; gen changes with every format
// change so derived handlers rebuild theirs.
type baseHandler struct {
	h   slog.Handler
	gen uint64
}

// NewControlled returns a logger like New's, and the Control that changes
// its level and format later.
func NewControlled(w io.Writer, format, level string) (*slog.Logger, *Control) {
	c := &Control{w: w}
	c.Set(format, level)
	return slog.New(&switchHandler{c: c}), c
}

// ControlOf returns the Control of a logger made by New or NewControlled,
// or nil for any other logger.
func ControlOf(l *slog.Logger) *Control {
	if l == nil {
		return nil
	}
	if h, ok := l.Handler().(*switchHandler); ok {
		return h.c
	}
	return nil
}

// ParseLevel maps a log_level value to a slog.Level; anything unknown is
// info (config validation refuses it before).
func ParseLevel(level string) slog.Level {
	switch strings.ToLower(level) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// resolveFormat turns "auto" (or "") into json or text for w.
func resolveFormat(w io.Writer, format string) string {
	if format == "auto" || format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if format != "text" {
		format = "json"
	}
	return format
}

// Set applies level and format ("auto", "json", "text") to the logger and
// every logger derived from it; it reports which of them changed.
func (c *Control) Set(format, level string) (levelChanged, formatChanged bool) {
	lv := ParseLevel(level)
	levelChanged = c.level.Level() != lv
	c.level.Set(lv)
	f := resolveFormat(c.w, format)
	c.mu.Lock()
	defer c.mu.Unlock()
	if f == c.format && c.base.Load() != nil {
		return levelChanged, false
	}
	opts := &slog.HandlerOptions{Level: &c.level}
	var h slog.Handler
	if f == "text" {
		h = slog.NewTextHandler(c.w, opts)
	} else {
		h = slog.NewJSONHandler(c.w, opts)
	}
	var gen uint64
	if old := c.base.Load(); old != nil {
		gen = old.gen + 1
	}
	formatChanged = c.format != ""
	c.format = f
	c.base.Store(&baseHandler{h: h, gen: gen})
	return levelChanged, formatChanged
}

// Level is the current level.
func (c *Control) Level() slog.Level { return c.level.Level() }

// Format is the current format, "json" or "text".
func (c *Control) Format() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.format
}

// op is one With or WithGroup applied to a derived handler.
type op struct {
	attrs []slog.Attr
	group string
}

// switchHandler is the Control's slog.Handler: it replays its With/
// WithGroup calls onto the current format's handler, rebuilding (once)
// after a format change.
type switchHandler struct {
	c     *Control
	ops   []op
	cache atomic.Pointer[baseHandler]
}

func (s *switchHandler) current() slog.Handler {
	b := s.c.base.Load()
	if cached := s.cache.Load(); cached != nil && cached.gen == b.gen {
		return cached.h
	}
	h := b.h
	for _, o := range s.ops {
		if o.group != "" {
			h = h.WithGroup(o.group)
		} else {
			h = h.WithAttrs(o.attrs)
		}
	}
	s.cache.Store(&baseHandler{h: h, gen: b.gen})
	return h
}

func (s *switchHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= s.c.level.Level()
}

func (s *switchHandler) Handle(ctx context.Context, r slog.Record) error {
	return s.current().Handle(ctx, r)
}

func (s *switchHandler) with(o op) *switchHandler {
	ops := make([]op, len(s.ops), len(s.ops)+1)
	copy(ops, s.ops)
	return &switchHandler{c: s.c, ops: append(ops, o)}
}

func (s *switchHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return s
	}
	return s.with(op{attrs: attrs})
}

func (s *switchHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return s
	}
	return s.with(op{group: name})
}

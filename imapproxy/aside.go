package imapproxy

import (
	"fmt"
	"runtime/debug"
)

// aside runs f on a goroutine of its own and waits for it. A login (the
// password check, the token, the upstream's TLS handshake) grows a
// goroutine's stack to 16 KiB or more; run aside, that stack is freed for
// the next login as soon as this one is over, and the session's goroutine,
// which then waits for hours on the splice or the Graph-served session,
// keeps the small stack it had before the login. A panic in f is raised
// again on the caller's goroutine, with f's stack in its value.
func aside(f func() bool) bool {
	type result struct {
		done     bool
		panicked any
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if v := recover(); v != nil {
				r.panicked = fmt.Sprintf("%v\n\ngoroutine of the login:\n%s", v, debug.Stack())
			}
			ch <- r
		}()
		r.done = f()
	}()
	r := <-ch
	if r.panicked != nil {
		panic(r.panicked)
	}
	return r.done
}

package aside

import (
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	for _, want := range []int{1, 2} {
		if got := Run(func() int { return want }); got != want {
			t.Errorf("Run() = %v, want %v", got, want)
		}
	}
	// A panic reaches the caller's goroutine with the stack of the
	// goroutine it happened on.
	defer func() {
		v := recover()
		s, _ := v.(string)
		if !strings.HasPrefix(s, "boom\n") || !strings.Contains(s, "TestRun") {
			t.Errorf("recovered %v, want the panic with its stack", v)
		}
	}()
	Run(func() bool { panic("boom") })
	t.Error("Run returned after a panic")
}

package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/localauth"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err    error
		kind   Kind
		result string
	}{
		{localauth.ErrInvalid, BadCredentials, "bad_credentials"},
		{fmt.Errorf("wrapped: %w", localauth.ErrInvalid), BadCredentials, "bad_credentials"},
		{fmt.Errorf("%w (detail)", localauth.ErrThrottled), Throttled, "throttled"},
		{fmt.Errorf("%w (detail)", localauth.ErrBusy), Busy, "busy"},
		// Anything else was not a checked password: never "bad credentials".
		{context.DeadlineExceeded, Busy, "busy"},
		{errors.New("something new"), Busy, "busy"},
		// An error that says both "wrong" and "not checked" was not checked.
		{errors.Join(localauth.ErrInvalid, localauth.ErrThrottled), Throttled, "throttled"},
		{fmt.Errorf("%w: %w", localauth.ErrInvalid, localauth.ErrBusy), Busy, "busy"},
	} {
		f := Classify(tc.err)
		if f.Kind != tc.kind || f.Kind.String() != tc.result || !errors.Is(f, tc.err) {
			t.Errorf("Classify(%v) = %v (%s), want %v (%s)", tc.err, f.Kind, f.Kind, tc.kind, tc.result)
		}
		if f.Kind.Temporary() != (tc.kind != BadCredentials) {
			t.Errorf("%v.Temporary() = %v", f.Kind, f.Kind.Temporary())
		}
	}
}

// fakeAfter records the delays asked for and fires at once.
type fakeAfter struct{ waits []time.Duration }

func (f *fakeAfter) after(d time.Duration) <-chan time.Time {
	f.waits = append(f.waits, d)
	ch := make(chan time.Time, 1)
	ch <- time.Time{}
	return ch
}

func TestPolicyDelayAndLimit(t *testing.T) {
	fa := &fakeAfter{}
	c := Policy{After: fa.after}.Conn()
	for i := 1; i <= DefaultMaxFailures; i++ {
		hangUp, err := c.Failed(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if hangUp != (i == DefaultMaxFailures) {
			t.Errorf("failure %d: hangUp = %v", i, hangUp)
		}
	}
	if len(fa.waits) != DefaultMaxFailures || fa.waits[0] != DefaultFailureDelay {
		t.Errorf("delays %v, want %d x %s", fa.waits, DefaultMaxFailures, DefaultFailureDelay)
	}
	if c.Failures() != DefaultMaxFailures {
		t.Errorf("Failures() = %d", c.Failures())
	}

	// Overrides; a negative delay means none.
	fa = &fakeAfter{}
	c = Policy{FailureDelay: -1, MaxFailures: 5, After: fa.after}.Conn()
	for i := 1; i <= 5; i++ {
		if hangUp, _ := c.Failed(context.Background()); hangUp != (i == 5) {
			t.Errorf("failure %d of 5: hangUp = %v", i, hangUp)
		}
	}
	if len(fa.waits) != 0 {
		t.Errorf("negative delay still waited: %v", fa.waits)
	}
}

func TestPolicyWaitEndsWithContext(t *testing.T) {
	never := func(time.Duration) <-chan time.Time { return nil }
	c := Policy{After: never}.Conn()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if hangUp, err := c.Failed(ctx); !hangUp || !errors.Is(err, context.Canceled) {
		t.Errorf("Failed with a done context = %v, %v; want hang up and its error", hangUp, err)
	}
}

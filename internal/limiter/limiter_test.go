package limiter

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLimitWaitAndRelease(t *testing.T) {
	var l Limiter
	ctx := context.Background()
	r1, err := l.Acquire(ctx, "mail:a", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := l.Acquire(ctx, "mail:a", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(ctx, "mail:a", 2, 0); !errors.Is(err, ErrLimit) {
		t.Fatalf("third Acquire without wait = %v, want ErrLimit", err)
	}
	// Other keys are independent.
	rb, err := l.Acquire(ctx, "mail:b", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	rb()
	// A waiter gets the slot when one is released.
	got := make(chan error, 1)
	go func() {
		r, err := l.Acquire(ctx, "mail:a", 2, 5*time.Second)
		if err == nil {
			r()
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	r1()
	r1() // release is idempotent
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	// A waiter that times out gets ErrLimit.
	r3, _ := l.Acquire(ctx, "mail:a", 2, 0)
	start := time.Now()
	if _, err := l.Acquire(ctx, "mail:a", 2, 50*time.Millisecond); !errors.Is(err, ErrLimit) {
		t.Fatalf("timed-out waiter = %v", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("waiter gave up after %v, before its wait", d)
	}
	r2()
	r3()
	if n := l.InUse("mail:a"); n != 0 {
		t.Errorf("InUse after all released = %d", n)
	}
}

func TestLimitConcurrent(t *testing.T) {
	var l Limiter
	var cur, peak atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := l.Acquire(context.Background(), "k", 3, 10*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			n := cur.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			cur.Add(-1)
			r()
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 3 || p < 1 {
		t.Errorf("peak concurrency = %d, want 1..3", p)
	}
}

func TestLimitContextCancel(t *testing.T) {
	var l Limiter
	r, _ := l.Acquire(context.Background(), "k", 1, 0)
	defer r()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	if _, err := l.Acquire(ctx, "k", 1, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("Acquire with cancelled ctx = %v", err)
	}
}

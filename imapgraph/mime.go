package imapgraph

import (
	"container/list"
	"fmt"
	"io"
	"sync"

	"github.com/emersion/go-imap/v2"
)

// mimeCache keeps recently fetched messages' MIME, least recently used out
// first, up to a byte bound shared by every session, so that a client that
// fetches the ENVELOPE, then the header, then BODY[] costs one download.
type mimeCache struct {
	mu    sync.Mutex
	max   int64
	used  int64
	lru   *list.List // of *mimeEntry, most recent at the back
	byKey map[string]*list.Element
}

type mimeEntry struct {
	key  string
	data []byte
}

func newMIMECache(max int64) *mimeCache {
	return &mimeCache{max: max, lru: list.New(), byKey: map[string]*list.Element{}}
}

func (c *mimeCache) get(key string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byKey[key]
	if e == nil {
		return nil, false
	}
	c.lru.MoveToBack(e)
	return e.Value.(*mimeEntry).data, true
}

func (c *mimeCache) put(key string, data []byte) {
	size := int64(len(data))
	if size > c.max/4 { // one huge message must not flush everything else
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.byKey[key]; e != nil {
		c.used -= int64(len(e.Value.(*mimeEntry).data))
		c.lru.Remove(e)
	}
	c.byKey[key] = c.lru.PushBack(&mimeEntry{key: key, data: data})
	c.used += size
	for c.used > c.max && c.lru.Len() > 0 {
		old := c.lru.Remove(c.lru.Front()).(*mimeEntry)
		delete(c.byKey, old.key)
		c.used -= int64(len(old.data))
	}
}

func (c *mimeCache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.byKey[key]; e != nil {
		c.used -= int64(len(e.Value.(*mimeEntry).data))
		c.lru.Remove(e)
		delete(c.byKey, key)
	}
}

// content returns a message's MIME, from the cache or from Graph.
func (s *session) content(id string) ([]byte, error) {
	key := s.account + "\x00" + id
	if b, ok := s.srv.mime.get(key); ok {
		return b, nil
	}
	var data []byte
	err := s.srv.retry(s.ctx, true, func() error {
		rc, err := s.mb.Content(s.ctx, id)
		if err != nil {
			return err
		}
		defer rc.Close()
		data, err = io.ReadAll(io.LimitReader(rc, s.srv.opts.MaxMessageBytes+1))
		return err
	})
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > s.srv.opts.MaxMessageBytes {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit,
			Text: fmt.Sprintf("message larger than the bridge's limit of %d bytes (imapgraph.DefaultMaxMessageBytes)", s.srv.opts.MaxMessageBytes)}
	}
	s.srv.mime.put(key, data)
	return data, nil
}

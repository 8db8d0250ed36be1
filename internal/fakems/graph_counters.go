package fakems

import "strings"

// GraphContentRequests returns how many requests for a message's content
// the Graph endpoint got, whatever their answer and mailbox: GET
// .../messages/{id}/$value (RouteGetMIME) and GET .../messages/{id}
// (RouteGetMessage). Listings and delta rounds are not counted.
func (f *Fake) GraphContentRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for k, v := range f.graph.counts {
		route, _, _ := strings.Cut(k, " ")
		if route == RouteGetMIME || route == RouteGetMessage {
			n += v
		}
	}
	return n
}

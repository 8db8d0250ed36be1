package config

import (
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Token store types of the store block.
const (
	StoreFile     = "file"     // the encrypted file state_dir/tokens.enc (one bridge)
	StorePostgres = "postgres" // a PostgreSQL table shared by several bridges
)

// Named defaults of the store block (type = "postgres"). A replica that
// holds a grant's refresh lease renews it every lease_heartbeat; if it
// dies, another replica takes the grant over lease_duration after the last
// renewal. Every poll_interval each replica reads which grants changed
// (sign-ins and refreshes by other replicas) and the lease holders.
const (
	DefaultLeaseDuration  = 60 * time.Second
	DefaultLeaseHeartbeat = 15 * time.Second
	DefaultStorePoll      = 5 * time.Second
)

// StoreBlock is the store { } block: where tokens are kept.
//
//	store {
//	  type = "postgres"
//	  dsn  = credential("oauthbridge-dsn")
//	}
type StoreBlock struct {
	Type    string
	DSN     Secret
	Replica string // name shown as lease holder; default: the host name

	// Resolved lease_duration, lease_heartbeat and poll_interval.
	Lease     time.Duration
	Heartbeat time.Duration
	Poll      time.Duration
}

// storeSchema is the store { } block as written (first stage): the raw
// duration strings and their ranges. validateStore builds StoreBlock.
type storeSchema struct {
	Type           string `hcl:"type,optional"`
	DSN            Secret `hcl:"dsn,optional"`
	Replica        string `hcl:"replica,optional"`
	LeaseDuration  string `hcl:"lease_duration,optional"`
	LeaseHeartbeat string `hcl:"lease_heartbeat,optional"`
	PollInterval   string `hcl:"poll_interval,optional"`

	DefRange       hcl.Range `hcl:",def_range"`
	TypeRange      hcl.Range `hcl:"type,attr_range"`
	DSNRange       hcl.Range `hcl:"dsn,attr_range"`
	LeaseRange     hcl.Range `hcl:"lease_duration,attr_range"`
	HeartbeatRange hcl.Range `hcl:"lease_heartbeat,attr_range"`
	PollRange      hcl.Range `hcl:"poll_interval,attr_range"`
}

// Shared reports whether several bridges may share this store.
func (s *StoreBlock) Shared() bool { return s != nil && s.Type == StorePostgres }

// validateStore fills in the store block's defaults and checks it.
func (c *Config) validateStore(s *storeSchema, file hcl.Range, diags *hcl.Diagnostics) {
	if s == nil {
		s = &storeSchema{}
	}
	def := orRange(s.DefRange, file)
	if s.Type == "" {
		s.Type = StoreFile
	}
	switch s.Type {
	case StoreFile:
		if s.DSN != "" {
			*diags = append(*diags, diagAt(s.DSNRange, def, "dsn without a database store",
				`dsn is only used with type = "postgres"; remove it, or set type = "postgres" to share tokens between bridges.`))
		}
	case StorePostgres:
		if s.DSN == "" {
			*diags = append(*diags, diagAt(s.DSNRange, def, "Missing dsn",
				`type = "postgres" needs dsn, the database to keep tokens in, e.g. dsn = credential("oauthbridge-dsn") holding "postgres://oauthbridge:PASSWORD@db.example.org:5432/oauthbridge?sslmode=verify-full". Keep the password out of the file: use credential() or env().`))
		}
	default:
		*diags = append(*diags, diagAt(s.TypeRange, def, "Invalid store type",
			fmt.Sprintf(`store type %q is not known: use "file" (the encrypted file in state_dir, one bridge) or "postgres" (several bridges sharing one PostgreSQL database).`, s.Type)))
	}
	if s.Replica == "" {
		s.Replica, _ = os.Hostname()
	}
	rt := &StoreBlock{Type: s.Type, DSN: s.DSN, Replica: s.Replica}
	rt.Lease = parseDuration(s.LeaseDuration, DefaultLeaseDuration, s.LeaseRange, def, "lease_duration", diags)
	rt.Heartbeat = parseDuration(s.LeaseHeartbeat, DefaultLeaseHeartbeat, s.HeartbeatRange, def, "lease_heartbeat", diags)
	rt.Poll = parseDuration(s.PollInterval, DefaultStorePoll, s.PollRange, def, "poll_interval", diags)
	if rt.Lease > 0 && rt.Heartbeat > 0 && rt.Heartbeat*2 > rt.Lease {
		*diags = append(*diags, diagAt(s.HeartbeatRange, def, "lease_heartbeat too long",
			fmt.Sprintf("lease_heartbeat (%s) must be at most half of lease_duration (%s), so that one late renewal does not lose the lease; the defaults are %s and %s.",
				rt.Heartbeat, rt.Lease, DefaultLeaseHeartbeat, DefaultLeaseDuration)))
	}
	c.Store = rt
}

package tokens

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/metrics"
)

// postgres is the PostgreSQL (12 and later) dialect. A MySQL 8 / MariaDB
// 10.6 dialect differs in: ? placeholders, BIGINT/LONGBLOB/DATETIME(6)
// columns, NOW(6) + INTERVAL ? * 1000 MICROSECOND, INSERT IGNORE for
// "insert unless present", and error 1062 for a duplicate key.
var postgres = &dialect{
	name: "postgres",
	migrations: []string{
		// 1: tokens and the key fingerprint.
		`CREATE TABLE IF NOT EXISTS oauthbridge_tokens (
	id          VARCHAR(200) PRIMARY KEY,
	version     BIGINT       NOT NULL DEFAULT 0,
	data        BYTEA,
	lease_owner VARCHAR(200) NOT NULL DEFAULT '',
	lease_until TIMESTAMPTZ  NOT NULL,
	updated_at  TIMESTAMPTZ  NOT NULL
);
CREATE TABLE IF NOT EXISTS oauthbridge_meta (
	name  VARCHAR(100) PRIMARY KEY,
	value VARCHAR(200) NOT NULL
)`,
	},
	isDup: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "23505" // unique_violation
	},
	ensure:   `INSERT INTO oauthbridge_tokens (id, lease_until, updated_at) VALUES ($1, $2, now()) ON CONFLICT (id) DO NOTHING`,
	claim:    `UPDATE oauthbridge_tokens SET lease_owner = $2, lease_until = now() + $3 * interval '1 millisecond' WHERE id = $1 AND (lease_until < now() OR lease_owner = $4)`,
	renew:    `UPDATE oauthbridge_tokens SET lease_until = now() + $3 * interval '1 millisecond' WHERE id = $1 AND lease_owner = $2`,
	release:  `UPDATE oauthbridge_tokens SET lease_owner = '', lease_until = $3 WHERE id = $1 AND lease_owner = $2`,
	get:      `SELECT version, data FROM oauthbridge_tokens WHERE id = $1`,
	holder:   `SELECT lease_owner, lease_until, now() FROM oauthbridge_tokens WHERE id = $1`,
	write:    `UPDATE oauthbridge_tokens SET data = $1, version = version + 1, updated_at = now() WHERE id = $2 AND version = $3`,
	poll:     `SELECT id, version, lease_owner, lease_until, now() FROM oauthbridge_tokens`,
	loadAll:  `SELECT id, version, data FROM oauthbridge_tokens`,
	metaPut:  `INSERT INTO oauthbridge_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`,
	metaGet:  `SELECT value FROM oauthbridge_meta WHERE name = $1`,
	schemaT:  `CREATE TABLE IF NOT EXISTS oauthbridge_schema (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
	schemaV:  `SELECT max(version) FROM oauthbridge_schema`,
	schemaIn: `INSERT INTO oauthbridge_schema (version) VALUES ($1)`,
}

// openPostgres connects to the shared store of sc, migrates its schema and
// checks that keyFile holds the key the store was created with. The key
// is never created here: replicas creating keys of their own would each
// write rows the others cannot read.
func openPostgres(sc *config.StoreBlock, keyFile string, log *slog.Logger, met *metrics.Metrics) (*sqlStore, map[string]*entry, error) {
	if met == nil {
		met = metrics.New(nil)
	}
	dsn := sc.DSN.Reveal()
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgconn's parse errors show the DSN with its password masked; be
		// sure anyway.
		return nil, nil, fmt.Errorf("tokens: store dsn cannot be parsed: %s; write a URL (postgres://user:password@host:5432/db?sslmode=verify-full) or key=value pairs", redactor(dsn, "")(err.Error()))
	}
	redact := redactor(dsn, pc.Password)
	if !strings.Contains(dsn, "default_query_exec_mode") {
		// No named prepared statements: they do not survive a
		// transaction-pooling PgBouncer between the replicas and the
		// database.
		pc.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	key, err := loadSharedKey(keyFile)
	if err != nil {
		return nil, nil, err
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		clear(key)
		return nil, nil, fmt.Errorf("tokens: key: %w", err)
	}
	db := stdlib.OpenDB(*pc)
	db.SetMaxOpenConns(maxStoreConns)
	db.SetMaxIdleConns(2)
	s := &sqlStore{
		db: db, d: postgres, aead: aead, keyID: keyID(key),
		owner: sc.Replica + "/" + randomID(4), lease: sc.Lease, beat: sc.Heartbeat,
		timeout: DefaultStoreStatementTimeout, log: log, redact: redact, met: met,
		known: map[string]bool{}, seen: map[string]int64{},
	}
	clear(key)
	ctx, cancel := context.WithTimeout(context.Background(), DefaultStoreStatementTimeout*3)
	defer cancel()
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("%w (store type postgres: check that the database in dsn is reachable and that its user may create tables)", err)
	}
	if err := s.checkKey(ctx, keyFile); err != nil {
		db.Close()
		return nil, nil, err
	}
	accts, err := s.load()
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return s, accts, nil
}

// maxStoreConns bounds one replica's connections to the database: the
// poll, a heartbeat or two and a few writes at a time.
const maxStoreConns = 4

// loadSharedKey reads the service key of a shared store; it must exist.
func loadSharedKey(path string) ([]byte, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokens: key file %s is missing: a shared token store (store type postgres) needs the same key on every replica; copy it from a replica that runs, or for the first replica create it with 'head -c 32 /dev/urandom > %s && chmod 600 %s' and copy that file (or the systemd credential %s) to the others", path, path, path, CredentialKeyName)
	}
	return loadKey(path, false, "the shared token store")
}

// redactor returns a function that removes the DSN and its password from
// error text.
func redactor(dsn, password string) func(string) string {
	return func(s string) string {
		if dsn != "" {
			s = strings.ReplaceAll(s, dsn, "[dsn]")
		}
		if password != "" {
			s = strings.ReplaceAll(s, password, config.Redacted)
		}
		return s
	}
}

package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The parsing of single values that need more than strconv: the database
// and runner URLs, the table's name and the signing secret.

// parseDatabaseURL parses the connection string as the relay will use it.
// Its errors are our own words: pgx's quote the string, and its redaction
// misses a key=value password written with spaces (password = x).
func parseDatabaseURL(s string) (*pgxpool.Config, error) {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return nil, &Error{"DATABASE_URL", "is not a valid URL"}
		}
		if u.Scheme != "postgres" && u.Scheme != "postgresql" {
			return nil, &Error{"DATABASE_URL", fmt.Sprintf("scheme must be postgres or postgresql, not %q", u.Scheme)}
		}
	} else if !strings.Contains(s, "=") {
		return nil, &Error{"DATABASE_URL", "must be a postgres:// URL or a key=value connection string"}
	}
	db, err := pgxpool.ParseConfig(s)
	if err != nil {
		return nil, &Error{"DATABASE_URL", "cannot be parsed as a connection string (check the host, port and parameters)"}
	}
	return db, nil
}

// checkHTTPURL checks an absolute http(s) URL with a host; its errors show
// the URL without its password.
func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("is not a valid URL")
	}
	shown := s
	if u.User != nil {
		shown = u.Redacted()
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("must be an absolute http or https URL, not %q", shown)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("has no host: %q", shown)
	}
	if p := u.Port(); p != "" {
		for _, r := range p {
			if r < '0' || r > '9' {
				return fmt.Errorf("has a bad port: %q", shown)
			}
		}
	}
	return nil
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// ParseTable splits "schema.table" or "table" (schema public) into its
// parts. Only plain identifiers are accepted, so the names can be quoted
// into SQL safely and match what Postgres stores.
func ParseTable(s string) (schema, table string, err error) {
	schema, table, ok := strings.Cut(s, ".")
	if !ok {
		schema, table = "public", s
	}
	if !identRE.MatchString(schema) || !identRE.MatchString(table) {
		return "", "", fmt.Errorf("must be a table name or schema.table of letters, digits and _ (at most 63 each), not %q", s)
	}
	return schema, table, nil
}

// DecodeSecret turns a Standard Webhooks secret ("whsec_" and base64) into
// the HMAC key. The error never quotes the secret.
func DecodeSecret(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return nil, errors.New("must start with whsec_ followed by base64")
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errors.New("is not valid base64 after whsec_")
	}
	if len(key) < 16 {
		return nil, fmt.Errorf("key is %d bytes; use at least 16 (24 to 64 recommended)", len(key))
	}
	return key, nil
}

package cdc

import (
	"context"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	t.Run("logical", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if err := Check(context.Background(), b.cfg); err != nil {
			t.Errorf("Check on a wal_level=logical server: %v", err)
		}
	})
	t.Run("wal_level replica", func(t *testing.T) {
		t.Parallel()
		c := pgtest.StartT(t, pgtest.WithWalLevel("replica"))
		cfg := Config{DatabaseURL: c.URL("postgres"), Schema: "public", Table: "t", Slot: "s", Publication: "p"}
		err := Check(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "wal_level: replica") {
			t.Fatalf("Check = %v, want a wal_level reason", err)
		}
		if strings.Contains(err.Error(), c.Password()) {
			t.Errorf("the reason holds the password: %v", err)
		}
		t.Logf("reason: %v", err)
	})
	for _, tc := range []struct {
		name, prefix, attributes, password, want string
	}{
		{"role without REPLICATION", "norepl", "", "secret-pw-123", "REPLICATION"},
		{"publication missing and not the owner", "notowner", "REPLICATION", "pw-456", "may not create it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			cfg := b.cfg
			_, cfg.DatabaseURL = b.role(t, tc.prefix, tc.attributes, tc.password)
			err := Check(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want a reason with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tc.password) {
				t.Errorf("the reason holds the password: %v", err)
			}
			t.Logf("reason: %v", err)
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		cfg := Config{DatabaseURL: "postgres://u:topsecret@127.0.0.1:1/db?connect_timeout=2", Slot: "s"}
		err := Check(context.Background(), cfg)
		if err == nil || strings.Contains(err.Error(), "topsecret") {
			t.Fatalf("Check = %v, want an error without the password", err)
		}
	})
}

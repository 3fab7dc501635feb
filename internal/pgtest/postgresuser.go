package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// serverCredential returns the postgres system user to run the server as
// when we are root, because PostgreSQL refuses to run as root; nil otherwise.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, so the server must run as the postgres user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: gid of postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// tempBase is where the cluster directory goes. The postgres user must be
// able to reach it, and TMPDIR may be under root's private home, so when we
// run as root and TMPDIR is not traversable by others, use /tmp.
func tempBase(cred *syscall.Credential) string {
	base := os.TempDir()
	if cred == nil {
		return base
	}
	for d := base; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return base
		}
	}
}

// run runs a PostgreSQL binary, as the postgres user when we are root.
func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	return c.runEnv(nil, name, args...)
}

// runEnv is run with extra environment variables (PGPASSWORD, say).
func (c *Cluster) runEnv(env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(c.binDir, name), args...)
	cmd.Dir = c.dir // the postgres user may not be able to enter our working directory
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), env...)
	// Its own process group keeps a Ctrl-C meant for the test (or the
	// demo) from cutting pg_ctl short and stranding a server or its files.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
	return cmd.CombinedOutput()
}

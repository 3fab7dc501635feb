package relaytest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

func TestBuildSetsTheVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the relay")
	}
	bin, err := Build(context.Background(), t.TempDir(), BuildOptions{Version: "relaytest-v1"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "relaytest-v1") {
		t.Errorf("version: %v %q", err, out)
	}
}

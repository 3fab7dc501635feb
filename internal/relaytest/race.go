//go:build race

package relaytest

// Race is true when this program was built with -race: a harness passes it
// to Build so that the relay under test runs with the race detector too,
// reusing the race-built packages.
const Race = true

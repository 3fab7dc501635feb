//go:build race

package faults

// raceEnabled builds the relay under test with the race detector when the
// tests themselves run with it (make test): the faults then also hunt data
// races in the real binary, and the build reuses the race-built packages.
const raceEnabled = true

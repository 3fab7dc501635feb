//go:build !race

package relaytest

// Race is true when this program was built with -race.
const Race = false

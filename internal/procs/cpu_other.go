//go:build !unix

package procs

import "time"

// cpuKnown is false where the process's CPU time is not read: the Sizer
// then leaves GOMAXPROCS alone.
const cpuKnown = false

func processCPU() time.Duration { return 0 }

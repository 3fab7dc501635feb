//go:build unix

package procs

import (
	"syscall"
	"time"
)

// cpuKnown says whether processCPU reads the process's CPU time here.
const cpuKnown = true

// processCPU is the CPU time the process has used, user and system.
func processCPU() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

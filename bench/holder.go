package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// holderArg makes the bench binary run as an idle-connection holder.
const holderArg = "-internal-idle-holder"

// idleHolder is a child process (the bench binary itself) that holds the
// client ends of the idle connections, so that the bench process holds
// only the backend ends: with two descriptors per connection in one
// process, 10,000 connections would not fit under a 20,000 file limit that
// an unprivileged process cannot raise.
type idleHolder struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	done chan struct{}
}

func startIdleHolder(addr string) (*idleHolder, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	h := &idleHolder{cmd: exec.Command(exe, holderArg, addr), done: make(chan struct{})}
	h.cmd.Stderr = os.Stderr
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if h.in, err = h.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	h.out = bufio.NewScanner(stdout)
	if err := h.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { h.cmd.Wait(); close(h.done) }()
	return h, nil
}

// open asks the holder to hold target connections in all (see idleSet.open).
func (h *idleHolder) open(target int, maxDur time.Duration) (open, failed int, firstErr string, err error) {
	if _, err := fmt.Fprintf(h.in, "open %d %d\n", target, maxDur.Milliseconds()); err != nil {
		return 0, 0, "", fmt.Errorf("idle holder: %w", err)
	}
	if !h.out.Scan() {
		return 0, 0, "", errors.New("idle holder: exited")
	}
	if _, err := fmt.Sscanf(h.out.Text(), "%d %d %q", &open, &failed, &firstErr); err != nil {
		return 0, 0, "", fmt.Errorf("idle holder: answered %q: %w", h.out.Text(), err)
	}
	return open, failed, firstErr, nil
}

// close makes the holder close its connections and exit.
func (h *idleHolder) close() {
	h.in.Close()
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
	}
}

// runIdleHolder is the holder's side: "open N MILLIS" lines on stdin, one
// "OPEN FAILED FIRST-ERROR" line back for each; EOF closes everything.
func runIdleHolder(addr string) int {
	set := &idleSet{}
	defer set.close()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var n int
		var ms int64
		if _, err := fmt.Sscanf(sc.Text(), "open %d %d", &n, &ms); err != nil {
			fmt.Fprintln(os.Stderr, "idle holder:", err)
			return 2
		}
		set.open(addr, n, 32, time.Duration(ms)*time.Millisecond)
		first := ""
		if set.firstErr != nil {
			first = set.firstErr.Error()
		}
		fmt.Printf("%d %d %q\n", len(set.conns), set.errs, first)
	}
	return 0
}

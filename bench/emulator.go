package main

// The WAN emulator: a child process (this binary, run with linkArg through
// `ip netns exec` in the middle namespace) that bridges two veths with
// AF_PACKET sockets and sends each frame out of the other side when the
// link model says (link.go).
//
// Why a process of its own and not a goroutine of the bench on setns'd
// sockets: its timing must not share a Go runtime (GC, scheduler) with the
// load generator and the backend, which run in the bench; its CPU time is
// its own in /proc; and if the bench dies the kernel kills it (Pdeathsig)
// without any cleanup code having to run.

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// linkArg makes the bench binary run as the WAN emulator.
const linkArg = "-internal-wan-link"

const (
	// maxFrame is the largest frame the emulator forwards: a 1500-byte MTU
	// plus the Ethernet header. Anything larger means an offload is on.
	maxFrame = 1514
	// inFlight bounds the frames queued or on the wire in one direction:
	// more than 100 Mbit/s x 10 s of 60-byte frames would ever need.
	inFlight = 1 << 16
	// spareBuffers are made per direction before bridging starts.
	spareBuffers = 2048
)

// dirStats count one direction of the link. Fields are exported for JSON
// (child to bench).
type dirStats struct {
	Frames, Bytes       int64 // arrived from the sending side
	Delivered, DelBytes int64 // sent out of the other side
	Lost                int64 // random loss
	QueueDrops          int64 // tail drops at the bottleneck
	Overflow            int64 // more than inFlight frames in the emulator (should be 0)
	Oversize            int64 // frames above maxFrame (an offload left on; should be 0)
	SendErrors          int64
	KernelDrops         int64   // the AF_PACKET socket's own drops (the emulator fell behind; should be 0)
	LateP50us           float64 // how late frames went out against their schedule
	LateP99us           float64
	LateMaxus           float64
	MaxBacklogMs        float64 // the longest wait at the bottleneck
}

// linkStats is what the emulator reports when it stops.
type linkStats struct {
	AtoB, BtoA dirStats
	CPUSeconds float64 // the emulator's utime+stime
	Realtime   bool    // every thread ran with SCHED_FIFO
	GCs        uint32  // garbage collections while bridging (each stops the loops briefly; should be 0)
}

// --- the child ---

type packetSock struct {
	fd    int
	name  string
	index int
}

func openPacketSock(ifname string) (*packetSock, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	// Protocol 0 until bound: a socket made for ETH_P_ALL would see every
	// interface's frames between socket() and bind().
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	s := &packetSock{fd: fd, name: ifname, index: ifi.Index}
	fail := func(what string, err error) (*packetSock, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s on %s: %w", what, ifname, err)
	}
	// Frames we send out of this interface must not come back to us.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fail("PACKET_IGNORE_OUTGOING", err)
	}
	// Room for bursts while the reader is descheduled (root may exceed rmem_max).
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		return fail("SO_RCVBUFFORCE", err)
	}
	proto := uint16(unix.ETH_P_ALL)
	proto = proto<<8 | proto>>8 // network byte order
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		return fail("bind", err)
	}
	return s, nil
}

// kernelDrops reads (and resets) the socket's drop count.
func (s *packetSock) kernelDrops() int64 {
	st, err := unix.GetsockoptTpacketStats(s.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return -1
	}
	return int64(st.Drops)
}

// direction moves frames from one socket to the other: one locked OS
// thread runs its whole loop (read what has arrived, send what is due,
// ppoll until the next frame is due or another arrives), so no frame waits
// for the Go scheduler, and with SCHED_FIFO none waits for other
// processes: the link keeps its timing on a busy machine.
type direction struct {
	from, to   *packetSock
	pump       *pump
	base       time.Time // the clock's origin, shared by both directions
	free       []*[]byte // buffers not in use
	frames     int64
	bytes      int64
	oversize   int64
	delivered  int64
	delBytes   int64
	sendErrors int64
	err        error
	fds        [1]unix.PollFd // poll's arguments, here so that they do not escape per call
	ts         unix.Timespec
}

// maxReads bounds the frames read in one go, so that a burst on the way
// in does not hold up frames that are due to go out.
const maxReads = 64

func (d *direction) now() time.Duration { return time.Since(d.base) }

func (d *direction) buffer() *[]byte {
	if n := len(d.free); n > 0 {
		b := d.free[n-1]
		d.free = d.free[:n-1]
		return b
	}
	b := make([]byte, maxFrame)
	return &b
}

func (d *direction) run(stop *atomic.Bool) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	d.fds = [1]unix.PollFd{{Fd: int32(d.from.fd), Events: unix.POLLIN}}
	for !stop.Load() {
		d.pump.flush(d.now(), func(f frame) {
			if err := sendFrame(d.to.fd, (*f.buf)[:f.n]); err != nil {
				d.sendErrors++
			} else {
				d.delivered++
				d.delBytes += int64(f.n)
			}
			d.free = append(d.free, f.buf)
		})
		wait := 100 * time.Millisecond // to look at stop now and then
		if at, ok := d.pump.next(); ok {
			wait = min(wait, at-d.now())
		}
		if wait > 0 {
			if err := d.poll(wait); err != nil && !errors.Is(err, unix.EINTR) {
				d.err = fmt.Errorf("ppoll %s: %w", d.from.name, err)
				return
			}
		}
		for range maxReads {
			bp := d.buffer()
			n, err := recvFrame(d.from.fd, *bp)
			if err != nil {
				d.free = append(d.free, bp)
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					break
				}
				d.err = fmt.Errorf("read %s: %w", d.from.name, err)
				return
			}
			d.frames++
			d.bytes += int64(n)
			if n > len(*bp) {
				d.oversize++
				d.free = append(d.free, bp)
				continue
			}
			if !d.pump.arrive(d.now(), frame{buf: bp, n: n}) {
				d.free = append(d.free, bp)
			}
		}
	}
}

// poll waits up to wait for a frame to arrive. Unlike unix.Ppoll it
// allocates nothing (its arguments live in d): the loop must not allocate,
// or garbage collection would come back, and its stop-the-world pauses
// held frames up by tens of milliseconds on a busy machine.
func (d *direction) poll(wait time.Duration) error {
	d.ts = unix.NsecToTimespec(wait.Nanoseconds())
	_, _, e := unix.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&d.fds[0])), 1, uintptr(unsafe.Pointer(&d.ts)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// recvFrame and sendFrame never block (MSG_DONTWAIT), so they are raw
// system calls: no hand-off of the thread's P to the Go scheduler, which a
// busy machine could delay for milliseconds, and no allocation per frame
// (unix.Recvfrom makes a Sockaddr each time). recvFrame returns the
// frame's full length even when it is longer than buf (MSG_TRUNC).
func recvFrame(fd int, buf []byte) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
		unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func sendFrame(fd int, b []byte) error {
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func (d *direction) stats() dirStats {
	us := func(t time.Duration) float64 { return float64(t) / 1e3 }
	p := d.pump
	return dirStats{
		Frames: d.frames, Bytes: d.bytes, Delivered: d.delivered, DelBytes: d.delBytes,
		Lost: p.lost, QueueDrops: p.tail, Overflow: p.overflow, Oversize: d.oversize,
		SendErrors: d.sendErrors, KernelDrops: d.from.kernelDrops(),
		LateP50us: us(p.late.quantile(0.5)), LateP99us: us(p.late.quantile(0.99)), LateMaxus: us(p.late.max),
		MaxBacklogMs: float64(p.model.maxBacklog) / 1e6,
	}
}

// runLink is the emulator child: it bridges interfaces -a and -b, says
// "ready" on stdout, and on EOF on stdin stops, prints its linkStats as
// one JSON line and exits.
func runLink(args []string) int {
	fs := flag.NewFlagSet("wan link", flag.ContinueOnError)
	a := fs.String("a", "", "interface A")
	b := fs.String("b", "", "interface B")
	var p linkParams
	fs.Float64Var(&p.Rate, "rate", 0, "bit/s, both directions")
	fs.DurationVar(&p.Delay, "delay", 0, "one-way delay")
	fs.Float64Var(&p.Loss, "loss", 0, "loss probability per frame, each direction")
	fs.DurationVar(&p.Queue, "queue", 0, "bottleneck queue as time at the rate")
	seed := fs.Uint64("seed", 1, "seed of the loss")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := p.validate(); err != nil || *a == "" || *b == "" {
		fmt.Fprintf(os.Stderr, "wan link: bad parameters (-a %q -b %q): %v\n", *a, *b, err)
		return 2
	}
	fmt.Fprintf(os.Stderr, "wan link: started (%s, %s)\n", *a, *b)
	// More Ps than goroutines that want one, so that a loop coming back
	// from ppoll always finds its P (or an idle one) at once instead of
	// waiting for another thread to give one back (with GOMAXPROCS 2 and
	// no real-time priority, that wait made 1% of frames leave 10-100 ms
	// late on a busy machine).
	runtime.GOMAXPROCS(max(8, runtime.NumCPU()))
	sa, err := openPacketSock(*a)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wan link:", err)
		return 1
	}
	sb, err := openPacketSock(*b)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wan link:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "wan link: sockets bound")
	base := time.Now()
	dirs := []*direction{
		{from: sa, to: sb, pump: newPump(p, *seed, inFlight), base: base},
		{from: sb, to: sa, pump: newPump(p, *seed+1, inFlight), base: base},
	}
	for _, d := range dirs {
		// Enough buffers for 100 Mbit/s x 200 ms of full frames, made now.
		for range spareBuffers {
			b := make([]byte, maxFrame)
			d.free = append(d.free, &b)
		}
	}
	// No garbage collection while bridging: the loops allocate nothing
	// once their buffers exist, and a collection's stop-the-world would
	// stop them (for as long as the thread finishing it waits for a CPU).
	// The memory limit brings collection back should something allocate
	// after all. Done before the threads go real-time: a collection (or
	// ReadMemStats, GOMAXPROCS: all stop the world) among threads that
	// all run SCHED_FIFO at one priority can wait forever, one thread
	// spinning for another that cannot preempt it on its CPU. Four WAN
	// runs were voided by a start stuck here ("sockets bound" logged,
	// "heap settled" never) when this came after realtime().
	runtime.GC()
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(512 << 20)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gcBefore := ms.NumGC
	fmt.Fprintln(os.Stderr, "wan link: heap settled")
	rtErr := realtime()
	if rtErr != nil {
		fmt.Fprintln(os.Stderr, "wan link: no real-time priority, the machine's scheduling will show in the link's timing:", rtErr)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, d := range dirs {
		// Drop what the sockets counted before we were bridging.
		d.from.kernelDrops()
		wg.Add(1)
		go func() { defer wg.Done(); d.run(&stop) }()
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	stop.Store(true)
	wg.Wait()
	for _, d := range dirs {
		if d.err != nil {
			fmt.Fprintln(os.Stderr, "wan link:", d.err)
			return 1
		}
	}
	// Back to normal scheduling before stopping the world again (above).
	if rtErr == nil {
		if err := setScheduler(unix.SCHED_NORMAL, 0); err != nil {
			fmt.Fprintln(os.Stderr, "wan link: leaving real-time priority:", err)
		}
	}
	runtime.ReadMemStats(&ms)
	out := linkStats{AtoB: dirs[0].stats(), BtoA: dirs[1].stats(), CPUSeconds: selfCPU(), GCs: ms.NumGC - gcBefore, Realtime: rtErr == nil}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 1
	}
	return 0
}

// realtime puts every thread of this process, and so every thread it
// starts later (they inherit it), under SCHED_FIFO. Priority for the loops'
// own threads is not enough: every 10 ms the Go runtime preempts a
// goroutine that has kept its P, and a preempted goroutine locked to its
// thread runs again only once some other thread of the runtime has picked
// it up, which on a busy machine waits behind every process of normal
// priority (frames then left up to 100 ms late). The process has no busy
// loop (the bridging loops block in ppoll, and the kernel keeps 5% of each
// second for others anyway).
func realtime() error {
	return setScheduler(unix.SCHED_FIFO, 10)
}

// setScheduler sets every thread of this process to policy and priority.
func setScheduler(policy, priority uint32) error {
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policy, Priority: priority}
	// Twice: a thread started during the first pass may have missed it.
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetAttr(tid, attr, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("sched_setattr %d: %w", tid, err)
			}
		}
	}
	return nil
}

func selfCPU() float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t unix.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// --- the bench's side ---

// emulator is a running emulator child.
type emulator struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	done  chan struct{}
	err   error
	log   string
}

// emulatorStartTimeout bounds the emulator's start (ip netns exec, two
// sockets, its buffers), which takes milliseconds; generous, since a
// start that misses it voids the run. The child logs each step of its
// start, so a start that hangs says where (see runLink).
const emulatorStartTimeout = 60 * time.Second

// startEmulator bridges interfaces a and b of namespace ns with p in each
// direction, and returns once the sockets are bound.
func startEmulator(ns, a, b string, p linkParams, seed uint64, logPath string) (*emulator, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	e := &emulator{lines: make(chan string, 4), done: make(chan struct{}), log: logPath}
	e.cmd = exec.Command("ip", "netns", "exec", ns, exe, linkArg, "-a", a, "-b", b,
		"-rate", strconv.FormatFloat(p.Rate, 'g', -1, 64), "-delay", p.Delay.String(),
		"-loss", strconv.FormatFloat(p.Loss, 'g', -1, 64), "-queue", p.Queue.String(),
		"-seed", strconv.FormatUint(seed, 10))
	e.cmd.Stderr = logf
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if e.in, err = e.cmd.StdinPipe(); err != nil {
		logf.Close()
		return nil, err
	}
	stdout, err := e.cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := e.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting the WAN emulator: %w", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			e.lines <- sc.Text()
		}
		close(e.lines)
	}()
	go func() {
		e.err = e.cmd.Wait()
		logf.Close()
		close(e.done)
	}()
	select {
	case l, ok := <-e.lines:
		if ok && l == "ready" {
			return e, nil
		}
		e.kill()
		return nil, fmt.Errorf("the WAN emulator did not start (said %q): %v\n%s", l, e.err, e.logTail())
	case <-time.After(emulatorStartTimeout):
		e.kill()
		return nil, fmt.Errorf("the WAN emulator did not start within %v\n%s", emulatorStartTimeout, e.logTail())
	}
}

func (e *emulator) logTail() string {
	b, _ := os.ReadFile(e.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (e *emulator) kill() {
	e.in.Close()
	e.cmd.Process.Kill()
	<-e.done
}

// alive reports an emulator that has died.
func (e *emulator) check() error {
	select {
	case <-e.done:
		return fmt.Errorf("the WAN emulator exited: %v\n%s", e.err, e.logTail())
	default:
		return nil
	}
}

// stop ends the emulator and returns its counters.
func (e *emulator) stop() (linkStats, error) {
	e.in.Close()
	var st linkStats
	select {
	case l, ok := <-e.lines:
		if !ok {
			<-e.done
			return st, fmt.Errorf("the WAN emulator exited without its counters: %v\n%s", e.err, e.logTail())
		}
		if err := json.Unmarshal([]byte(l), &st); err != nil {
			e.kill()
			return st, fmt.Errorf("the WAN emulator's counters %q: %w", l, err)
		}
	case <-time.After(10 * time.Second):
		e.kill()
		return st, errors.New("the WAN emulator did not stop within 10s")
	}
	select {
	case <-e.done:
	case <-time.After(5 * time.Second):
		e.kill()
	}
	return st, nil
}

// Command proxycheck is the helper of test/container/run.sh. It talks to
// 127.0.0.1 only, and every mode stops by itself.
//
//	proxycheck port tcp|udp           print a port that is free on 127.0.0.1
//	proxycheck backend ADDRFILE       a backend that insists on a PROXY v1 header
//	proxycheck send HOST:PORT         send through the tunnel, check what the backend saw
//	proxycheck api METHOD URL [BODY]  one management API call; prints the body, fails unless 2xx
//	proxycheck static FILE            fail unless FILE is a statically linked ELF executable
package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: proxycheck port|backend|send|api|static ...")
	}
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "port":
		err = freePort(args)
	case "backend":
		err = backend(args)
	case "send":
		err = send(args)
	case "api":
		err = api(args)
	case "static":
		err = static(args)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "proxycheck:", msg)
	os.Exit(1)
}

func loopbackOnly(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
		return fmt.Errorf("%s is not a loopback address: this helper talks to 127.0.0.1 only", hostport)
	}
	return nil
}

func freePort(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: port tcp|udp")
	}
	switch args[0] {
	case "udp":
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer c.Close()
		fmt.Println(c.LocalAddr().(*net.UDPAddr).Port)
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer l.Close()
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
	default:
		return fmt.Errorf("port: %q is not tcp or udp", args[0])
	}
	return nil
}

// backend listens on 127.0.0.1 and, for each connection, requires a PROXY
// v1 header (from a loopback peer: the threshold client), reads the message
// to EOF and answers "OK <source from the header> <message>", or "ERR
// <reason>". It serves for at most five minutes.
func backend(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: backend ADDRFILE")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	if err := os.WriteFile(args[0], []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("backend: listening on %s\n", ln.Addr())
	time.AfterFunc(5*time.Minute, func() {
		fmt.Println("backend: five minutes are up, stopping")
		ln.Close()
	})
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		go serveConn(c)
	}
}

func serveConn(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	src, msg, err := readProxied(c)
	if err != nil {
		fmt.Printf("backend: connection from %s refused: %v\n", c.RemoteAddr(), err)
		fmt.Fprintf(c, "ERR %v", err)
		return
	}
	fmt.Printf("backend: connection from %s carried PROXY v1 source %s, message %q\n", c.RemoteAddr(), src, msg)
	fmt.Fprintf(c, "OK %s %s", src, msg)
}

// readProxied parses "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" (at most 107
// bytes, as the PROXY protocol specification says), then reads to EOF.
func readProxied(c net.Conn) (src, msg string, err error) {
	if err := loopbackOnly(c.RemoteAddr().String()); err != nil {
		return "", "", fmt.Errorf("peer: %w", err)
	}
	r := bufio.NewReaderSize(c, 256)
	var line []byte
	for len(line) < 107 {
		b, err := r.ReadByte()
		if err != nil {
			return "", "", fmt.Errorf("no PROXY v1 header (%d bytes, then %v)", len(line), err)
		}
		line = append(line, b)
		if b == '\n' {
			break
		}
	}
	text, ok := strings.CutSuffix(string(line), "\r\n")
	if !ok {
		return "", "", fmt.Errorf("no PROXY v1 header: first bytes %q", line)
	}
	f := strings.Split(text, " ")
	if len(f) != 6 || f[0] != "PROXY" || (f[1] != "TCP4" && f[1] != "TCP6") {
		return "", "", fmt.Errorf("malformed PROXY v1 header %q", text)
	}
	srcIP, err1 := netip.ParseAddr(f[2])
	_, err2 := netip.ParseAddr(f[3])
	sport, err3 := strconv.ParseUint(f[4], 10, 16)
	_, err4 := strconv.ParseUint(f[5], 10, 16)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return "", "", fmt.Errorf("malformed PROXY v1 header %q: %v", text, err)
	}
	if (f[1] == "TCP4") != srcIP.Is4() {
		return "", "", fmt.Errorf("PROXY v1 header %q: family does not match the address", text)
	}
	body, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return "", "", fmt.Errorf("reading the message: %v", err)
	}
	return net.JoinHostPort(srcIP.String(), strconv.FormatUint(sport, 10)), string(body), nil
}

// send dials the public port, sends a message, half-closes and checks the
// answer: the backend must have seen this sender's own address and message.
func send(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: send HOST:PORT")
	}
	if err := loopbackOnly(args[0]); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	from := c.LocalAddr().String()
	msg := fmt.Sprintf("Hello ! Hello! from a container test at %d", time.Now().UnixNano())
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	reply, err := io.ReadAll(io.LimitReader(c, 1<<20))
	if err != nil {
		return fmt.Errorf("reading the reply: %v", err)
	}
	want := "OK " + from + " " + msg
	if string(reply) != want {
		return fmt.Errorf("sender %s got %q, want %q", from, reply, want)
	}
	fmt.Printf("sender %s: the backend saw source %s in its PROXY v1 header and echoed the message\n", from, from)
	return nil
}

func api(args []string) error {
	if len(args) != 2 && len(args) != 3 {
		return errors.New("usage: api METHOD URL [BODY]")
	}
	var body io.Reader
	if len(args) == 3 {
		body = strings.NewReader(args[2])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, args[0], args[1], body)
	if err != nil {
		return err
	}
	if err := loopbackOnly(req.URL.Host); err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	fmt.Println(string(bytes.TrimSpace(data)))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s", args[0], args[1], resp.Status)
	}
	return nil
}

func static(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: static FILE")
	}
	f, err := elf.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s asks for a dynamic loader", args[0])
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return fmt.Errorf("%s needs shared libraries %v", args[0], libs)
	}
	fmt.Printf("%s: static %s ELF executable\n", args[0], f.Machine)
	return nil
}

// Command nettool is the e2e tests' stand-in for programs on the hosts of a
// network-namespace topology: services, a sender, a SOCKS5 user and an HTTP
// client for the management API. Every operation is bounded in time.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/thresholdtunnel/threshold/test/e2e/socksclient"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nettool echo-source|proxy-backend|dial|socks|http [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	listen := fs.String("listen", "", "address to listen on")
	addr := fs.String("addr", "", "address to dial")
	proxy := fs.String("proxy", "", "SOCKS5 proxy address")
	msg := fs.String("msg", "hello", "message to send")
	method := fs.String("method", "GET", "HTTP method")
	url := fs.String("url", "", "HTTP URL")
	body := fs.String("body", "", "HTTP body")
	token := fs.String("token", "", "bearer token for HTTP")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on the operation")
	deadline := fs.Duration("deadline", 30*time.Second, "echo services: how long a connection may last")
	fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "echo-source":
		err = serve(*listen, false, *deadline)
	case "proxy-backend":
		err = serve(*listen, true, *deadline)
	case "dial":
		err = dial(*addr, *msg, *timeout)
	case "socks":
		err = socks(*proxy, *addr, *msg, *timeout)
	case "http":
		err = httpCall(*method, *url, *body, *token, *timeout)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		var re *socksclient.ReplyError
		if errors.As(err, &re) {
			fmt.Printf("SOCKS_REPLY %#02x\n", re.Code)
			os.Exit(3)
		}
		fmt.Fprintln(os.Stderr, "nettool:", err)
		os.Exit(1)
	}
}

// serve answers each connection with "SRC <source address>\n", then echoes
// until EOF. With PROXY, the source comes from a required PROXY header.
func serve(addr string, withProxy bool, deadline time.Duration) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if withProxy {
		ln = &proxyproto.Listener{Listener: ln, ConnPolicy: proxyproto.TrustProxyHeaderFrom(net.IPv4(127, 0, 0, 1)), ReadHeaderTimeout: 5 * time.Second}
	}
	fmt.Println("ready", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(deadline))
			fmt.Fprintf(c, "SRC %s\n", c.RemoteAddr())
			io.Copy(c, c)
		}()
	}
}

func exchange(c net.Conn, msg string, timeout time.Duration) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	fmt.Print(string(got))
	if !strings.HasSuffix(string(got), msg) {
		return fmt.Errorf("echo missing from %q", got)
	}
	return nil
}

func dial(addr, msg string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	return exchange(c, msg, timeout)
}

func socks(proxy, addr, msg string, timeout time.Duration) error {
	c, err := socksclient.Dial(proxy, addr, timeout)
	if err != nil {
		return err
	}
	return exchange(c, msg, timeout)
}

func httpCall(method, url, body, token string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader([]byte(body)))
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	fmt.Printf("%d %s\n", resp.StatusCode, b)
	return err
}

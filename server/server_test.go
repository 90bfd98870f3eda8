package server_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thresholdtunnel/threshold/client"
	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/keyfile"
	"github.com/thresholdtunnel/threshold/server"
)

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestNewListsEveryConfigProblem(t *testing.T) {
	_, err := server.New(server.Config{
		TunnelControlPort: 70000, ManagementAddress: "example.com", LogFormat: "yaml",
		Socks5AllowPorts: []string{"http"},
		Clients:          []control.Registration{{ClientId: "a b", PublicKey: "x"}},
	}, quiet())
	var p *control.Problems
	if !errors.As(err, &p) || !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("New = %v, want *control.Problems", err)
	}
	for _, want := range []string{"TunnelControlPort", "ManagementAddress", "LogFormat", "Socks5AllowPorts", "Clients[0].ClientId", "Clients[0].PublicKey"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems do not name %s: %q", want, p.Lines())
		}
	}
	// Authentication problems are reported with the config's own names.
	_, err = server.New(server.Config{ManagementAddress: "0.0.0.0", ManagementTokenFile: filepath.Join(t.TempDir(), "missing")}, quiet())
	if !errors.As(err, &p) || !strings.Contains(err.Error(), "ManagementTokenFile") {
		t.Fatalf("New with a missing token file = %v", err)
	}
	_, err = server.New(server.Config{ManagementAddress: "0.0.0.0"}, quiet())
	if !errors.As(err, &p) || !strings.HasPrefix(p.Lines()[0], "ManagementAddress:") {
		t.Fatalf("New without auth beyond loopback = %v", err)
	}
}

// A port that cannot be bound fails New, and nothing stays bound.
func TestNewBusyManagementPortLeavesNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	udp := freePort(t, "udp")
	dir := t.TempDir()
	_, err = server.New(server.Config{TunnelControlPort: udp, ManagementPort: busy.Addr().(*net.TCPAddr).Port, StateDir: dir}, quiet())
	if err == nil || !strings.Contains(err.Error(), "management API") {
		t.Fatalf("New on a busy management port = %v", err)
	}
	c, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(udp))
	if err != nil {
		t.Fatalf("the WireGuard port stayed bound: %v", err)
	}
	c.Close()
}

// The server and client run in process through the constructors the
// binary uses, carry a connection end to end, and leave no goroutine.
func TestInProcess(t *testing.T) {
	before := runtime.NumGoroutine()
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	dir := t.TempDir()
	ck, err := keyfile.Load(filepath.Join(dir, "client.key"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	udp := freePort(t, "udp")
	srv, err := server.New(server.Config{
		TunnelControlPort: udp, ManagementPort: freePort(t, "tcp"), StateDir: filepath.Join(dir, "state"),
		Clients: []control.Registration{{ClientId: "home", PublicKey: ck.PublicKey().String()}},
	}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(ctx) }()
	cli, err := client.New(ctx, client.Config{
		ClientId: "home", ServerHost: "127.0.0.1", ServerTunnelControlPort: udp,
		ServerPublicKey: srv.PublicKey().String(), PrivateKeyFile: filepath.Join(dir, "client.key"),
		ServiceToLocalAddrMap: map[string]client.Service{"echo": client.Addr(backend.Addr().String())},
	}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	go cli.Run(ctx)
	deadline := time.Now().Add(20 * time.Second)
	for srv.Control().Clients()["home"].CurrentState != control.ClientConnected {
		if time.Now().After(deadline) {
			t.Fatal("the client did not connect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	port := freePort(t, "tcp")
	if _, err := srv.Control().SetTunnels([]forward.Tunnel{{ListenAddress: "127.0.0.1", ListenPort: port, BackEndService: "echo", ClientId: "home"}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "through the tunnel")
	buf := make([]byte, len("through the tunnel"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "through the tunnel" {
		t.Fatalf("echo: %q, %v", buf, err)
	}
	c.Close()
	if _, err := os.Stat(filepath.Join(dir, "state", "state.json")); err != nil {
		t.Errorf("no state saved: %v", err)
	}

	cancel()
	if err := <-ran; err != nil {
		t.Errorf("Run = %v", err)
	}
	srv.Close() // idempotent
	cli.Close()
	backend.Close()
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

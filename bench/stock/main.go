// Command stock is the naive baseline for the benchmark in ../: two
// wireguard-go devices linked over loopback UDP, each on top of wireguard-go's
// stock tun/netstack package, shaped like threshold (a public TCP port on the
// server side, each connection opened through the tunnel to the client side,
// which connects it to the backend), with nothing but io.Copy both ways.
//
//	stock -mode server -private HEX -peer HEX -wg-port 51820 -listen 127.0.0.1:9000
//	stock -mode client -private HEX -peer HEX -endpoint 127.0.0.1:51820 -backend 127.0.0.1:9001
//
// Keys are 32-byte Curve25519 keys in hex (wireguard-go's UAPI format).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

var (
	serverAddr = netip.MustParseAddr("fd62:656e:6368::1")
	clientAddr = netip.MustParseAddr("fd62:656e:6368::2")
)

const (
	mtu           = 1420
	connectorPort = 4000
)

func main() {
	mode := flag.String("mode", "", "server or client")
	private := flag.String("private", "", "own private key, hex")
	peer := flag.String("peer", "", "peer's public key, hex")
	wgPort := flag.Int("wg-port", 0, "server: WireGuard UDP port")
	listen := flag.String("listen", "", "server: public TCP address")
	endpoint := flag.String("endpoint", "", "client: server's WireGuard UDP address")
	backend := flag.String("backend", "", "client: backend TCP address")
	flag.Parse()
	log.SetPrefix("stock " + *mode + ": ")

	self, other := serverAddr, clientAddr
	if *mode == "client" {
		self, other = clientAddr, serverAddr
	}
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{self}, nil, mtu)
	if err != nil {
		log.Fatal(err)
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "stock: "))
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=%d\npublic_key=%s\nallowed_ip=%s/128\n", *private, *wgPort, *peer, other)
	if *mode == "client" {
		uapi += fmt.Sprintf("endpoint=%s\npersistent_keepalive_interval=25\n", *endpoint)
	}
	if err := dev.IpcSet(uapi); err != nil {
		log.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		log.Fatal(err)
	}
	defer dev.Close()

	switch *mode {
	case "server":
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			log.Fatal(err)
		}
		go accept(ln, func() (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return tnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(clientAddr, connectorPort))
		})
	case "client":
		ln, err := tnet.ListenTCPAddrPort(netip.AddrPortFrom(clientAddr, connectorPort))
		if err != nil {
			log.Fatal(err)
		}
		go accept(ln, func() (net.Conn, error) { return net.DialTimeout("tcp", *backend, 5*time.Second) })
	default:
		log.Fatalf("-mode must be server or client, not %q", *mode)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
}

func accept(ln net.Listener, dial func() (net.Conn, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Print(err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			up, err := dial()
			if err != nil {
				log.Print(err)
				c.Close()
				return
			}
			join(c, up)
		}()
	}
}

// join copies both ways, passing on half-closes, then closes both; an
// error either way closes both at once.
func join(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil {
			a.Close() // a reset: unblock the other direction too
			b.Close()
			return
		}
		closeWrite(dst)
	}
	go pipe(b, a)
	go pipe(a, b)
	wg.Wait()
	a.Close()
	b.Close()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		c.Close()
	}
}

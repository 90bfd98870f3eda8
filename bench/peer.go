package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Peer tunnels: other tunnel programs, given as binaries on the command line
// (-peer NAME=SERVER,CLIENT), measured side by side with threshold in the
// same run. The bench never builds them; it configures and starts them as
// a user would, with each program's defaults except where noted.

// peerSpec is one -peer flag: which program, and where its binaries are.
type peerSpec struct {
	kind      string // a key of peerKinds
	serverBin string
	clientBin string
}

// peerKind knows how to configure and start one program.
type peerKind struct {
	about string // for the report: what is measured and how it is set up
	start func(spec peerSpec, env peerEnv) (*instance, error)
}

var peerKinds = map[string]peerKind{
	"frp": {
		about: "frp (frps + frpc, a TCP proxy over one TLS connection, TLS on as by default, tcpMux (yamux) on as by default, token auth)",
		start: startFRP,
	},
}

// parsePeer parses NAME=SERVER_BINARY,CLIENT_BINARY.
func parsePeer(s string) (peerSpec, error) {
	kind, bins, ok := strings.Cut(s, "=")
	if !ok {
		return peerSpec{}, fmt.Errorf("%q: want NAME=SERVER_BINARY,CLIENT_BINARY", s)
	}
	if _, known := peerKinds[kind]; !known {
		var names []string
		for k := range peerKinds {
			names = append(names, k)
		}
		return peerSpec{}, fmt.Errorf("%q: unknown peer %q (known: %s)", s, kind, strings.Join(names, ", "))
	}
	srv, cli, ok := strings.Cut(bins, ",")
	if !ok || srv == "" || cli == "" {
		return peerSpec{}, fmt.Errorf("%q: want NAME=SERVER_BINARY,CLIENT_BINARY", s)
	}
	spec := peerSpec{kind: kind}
	for _, p := range []struct {
		dst *string
		src string
	}{{&spec.serverBin, srv}, {&spec.clientBin, cli}} {
		abs, err := filepath.Abs(p.src)
		if err != nil {
			return peerSpec{}, err
		}
		st, err := os.Stat(abs)
		if err != nil {
			return peerSpec{}, fmt.Errorf("peer %s: %w", kind, err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return peerSpec{}, fmt.Errorf("peer %s: %s is not an executable file", kind, abs)
		}
		*p.dst = abs
	}
	return spec, nil
}

// peerEnv is where a peer tunnel runs. On loopback every address is on
// 127.0.0.1 and the prefixes are empty; the WAN benchmark runs the server
// and the client in network namespaces by giving prefixes such as
// ["ip", "netns", "exec", "NS"] and the addresses as seen in each.
type peerEnv struct {
	dir string // for configs and logs; created if missing
	// ServerPrefix and ClientPrefix are prepended to the command lines.
	serverPrefix, clientPrefix []string
	// tunnelListen is where the server accepts its client; tunnelDial is
	// the same as the client reaches it.
	tunnelListen, tunnelDial string
	// public is where the server listens for the users (the load
	// generator connects there); backend is what the client connects to.
	public, backend string
	// ready reports whether the tunnel carries traffic end to end; nil
	// means an echo through public from this process.
	ready func() error
	// readyTimeout bounds the wait for ready; 30 s when zero.
	readyTimeout time.Duration
}

// loopbackPeerEnv picks free loopback ports for a peer on this host.
func loopbackPeerEnv(dir, backend string) (peerEnv, error) {
	tunnelPort, err := freePort("tcp")
	if err != nil {
		return peerEnv{}, err
	}
	publicPort, err := freePort("tcp")
	if err != nil {
		return peerEnv{}, err
	}
	tunnel := net.JoinHostPort("127.0.0.1", strconv.Itoa(tunnelPort))
	return peerEnv{
		dir: dir, tunnelListen: tunnel, tunnelDial: tunnel,
		public: net.JoinHostPort("127.0.0.1", strconv.Itoa(publicPort)), backend: backend,
	}, nil
}

func (e peerEnv) waitReady(in *instance) error {
	ok := e.ready
	if ok == nil {
		ok = func() error { return shortConn(dial, e.public) }
	}
	timeout := e.readyTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	return waitFor(timeout, "an echo through the "+in.path+" tunnel", func() error {
		if err := in.check(); err != nil {
			return err
		}
		return ok()
	})
}

// startPeer starts the peer tunnel of spec in env and waits until it
// carries an echo; the instance's path is the peer's name.
func startPeer(spec peerSpec, env peerEnv) (*instance, error) {
	if err := os.MkdirAll(env.dir, 0o700); err != nil {
		return nil, err
	}
	return peerKinds[spec.kind].start(spec, env)
}

// splitHostPort is net.SplitHostPort with the port as a number.
func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%q: bad port", addr)
	}
	return h, port, nil
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string { return strconv.Quote(s) }

// startFRP runs frps and frpc with TOML configs: a shared random token,
// one "tcp" proxy from the public port to the backend. TLS between frpc
// and frps is frp's default (transport.tls.enable = true since v0.50);
// frps is also told to refuse anything but TLS (transport.tls.force), so
// the figures cannot silently come from a plaintext tunnel.
func startFRP(spec peerSpec, env peerEnv) (_ *instance, err error) {
	bindHost, bindPort, err := splitHostPort(env.tunnelListen)
	if err != nil {
		return nil, fmt.Errorf("frp tunnel listen address: %w", err)
	}
	dialHost, dialPort, err := splitHostPort(env.tunnelDial)
	if err != nil {
		return nil, fmt.Errorf("frp tunnel dial address: %w", err)
	}
	pubHost, pubPort, err := splitHostPort(env.public)
	if err != nil {
		return nil, fmt.Errorf("frp public address: %w", err)
	}
	beHost, bePort, err := splitHostPort(env.backend)
	if err != nil {
		return nil, fmt.Errorf("frp backend address: %w", err)
	}
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	token := hex.EncodeToString(tok[:])
	frps := fmt.Sprintf(`bindAddr = %s
bindPort = %d
proxyBindAddr = %s
auth.method = "token"
auth.token = %s
transport.tls.force = true
log.to = "console"
log.level = "warn"
`, tomlString(bindHost), bindPort, tomlString(pubHost), tomlString(token))
	frpc := fmt.Sprintf(`serverAddr = %s
serverPort = %d
auth.method = "token"
auth.token = %s
loginFailExit = false
log.to = "console"
log.level = "warn"

[[proxies]]
name = "bench"
type = "tcp"
localIP = %s
localPort = %d
remotePort = %d
`, tomlString(dialHost), dialPort, tomlString(token), tomlString(beHost), bePort, pubPort)
	srvCfg, cliCfg := filepath.Join(env.dir, "frps.toml"), filepath.Join(env.dir, "frpc.toml")
	if err := errors.Join(os.WriteFile(srvCfg, []byte(frps), 0o600), os.WriteFile(cliCfg, []byte(frpc), 0o600)); err != nil {
		return nil, err
	}
	in := &instance{path: "frp", addr: env.public}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, in.logs())
			in.stop()
		}
	}()
	srv, err := startProc("frps", filepath.Join(env.dir, "frps.log"), env.serverPrefix, spec.serverBin, "-c", srvCfg)
	if err != nil {
		return nil, err
	}
	in.procs = append(in.procs, srv)
	cli, err := startProc("frpc", filepath.Join(env.dir, "frpc.log"), env.clientPrefix, spec.clientBin, "-c", cliCfg)
	if err != nil {
		return nil, err
	}
	in.procs = append(in.procs, cli)
	if err := env.waitReady(in); err != nil {
		return nil, err
	}
	return in, nil
}

// Package forward carries TCP connections and UDP sessions between the
// public side of a threshold server and the local services of a threshold
// client.
//
// On the server, the Gateway holds one public listener per address and port
// and matches each connection to one of the tunnels there (gateway.go, with
// forward/sniff for ports shared by host name), then hands it to the
// tunnel's target (target.go): the first connected client in the newest
// Directory the control plane published gets it, with a link request
// (linkproto.go) naming the service. Egress serves the clients' SOCKS5
// sessions from the server's network, under an EgressPolicy.
//
// On the client, the Connector reads each link request and connects it to
// the service its own map names, and the Relay carries the local SOCKS5
// port to the server.
//
// UDP tunnels (udpgateway.go on the server, udpconnector.go on the
// client) carry each public source's datagrams as self-describing frames
// (udpproto.go) on the tunnel's UDP: the server keeps a session per source
// with no goroutine of its own, the client a socket per session toward the
// service its map names.
//
// Join copies bytes both ways with half-close. Every forwarder shares one
// lifecycle (lifecycle.go): listeners, tracked sessions, a context and
// WaitGroup, an explicit state, Shutdown and an idempotent Close.
//
// The package imports nothing else of threshold's: it sees clients only
// through a Directory, and the tunnel only through the dial and listen
// functions it is given.
package forward

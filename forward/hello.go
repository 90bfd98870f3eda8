package forward

// A Hello tells the server the name a client gives itself (its ClientId),
// so that the server can point out a client whose config names it
// otherwise than its registration does. The client sends one to the
// server's HeartbeatPort with its first heartbeat and then every
// HelloEvery heartbeats. It is a datagram of its own, not part of the
// Ping: an older server ignores it (it only answers PingLen-byte pings),
// and an older client simply sends none.
const HelloEvery = 10

var helloMagic = [4]byte{'t', 'h', 'n', '1'}

// MaxHelloLen bounds a Hello: the magic and a ClientId of up to 128 bytes.
const MaxHelloLen = 4 + 128

// Hello is the datagram that names a client.
func Hello(clientID string) []byte {
	if len(clientID) > MaxHelloLen-4 {
		clientID = clientID[:MaxHelloLen-4]
	}
	return append(helloMagic[:], clientID...)
}

// ParseHello returns the name a Hello carries; ok is false for anything
// else (the name is not checked: that is the receiver's to do).
func ParseHello(b []byte) (name string, ok bool) {
	if len(b) <= 4 || len(b) > MaxHelloLen || [4]byte(b[:4]) != helloMagic {
		return "", false
	}
	return string(b[4:]), true
}

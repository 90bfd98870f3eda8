package wg

import (
	"crypto/hmac"
	"encoding/binary"
	"hash"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
)

// Refused handshakes. wireguard-go drops a handshake initiation silently
// (at debug level: "Received invalid initiation message") when it was
// made for another public key than the device's, or comes from a key that
// is no peer, which are the two usual first mistakes of a setup. The
// watcher here tells them apart: it reads the initiations the bind
// receives (a length and a type byte per packet; nothing else is looked
// at in data packets), checks their MAC1 against the device's key and
// decrypts the initiator's static key as the Noise IK pattern lets the
// responder do (wireguard-go's ConsumeMessageInitiation), and reports the
// refused ones. It is bounded: a source already reported is skipped
// without any work for refusedInterval, and so is a source the device
// answered with a handshake response within answeredFor (a peer that
// rekeys every two minutes is decoded once, not every time); at most
// refusedBurst initiations are decoded at once and then refusedRate a
// second (one X25519 each, as wireguard-go itself spends), and the queue
// to the decoder is short and never blocks the receive path.

// RefusedHandshake is a handshake initiation the device refuses.
type RefusedHandshake struct {
	From netip.AddrPort
	// WrongKey: the initiation was made for another public key than the
	// device's (its MAC1 does not match), so the sender's idea of this
	// device's public key is wrong. PublicKey is then unknown.
	WrongKey bool
	// PublicKey is the sender's public key, which is no peer of the
	// device.
	PublicKey Key
}

const (
	initiationSize  = 148
	initiationType  = 1
	refusedInterval = time.Minute // per source
	refusedBurst    = 10
	refusedRate     = 0.5 // decodes per second after the burst
	refusedQueue    = 16
	refusedSources  = 4096 // sources remembered at most, each table
	responseSize    = 92
	responseType    = 2
	answeredFor     = 10 * time.Minute
)

var (
	noiseChainKey [blake2s.Size]byte // HASH(Construction)
	noiseHash     [blake2s.Size]byte // HASH(ChainKey || Identifier)
)

func init() {
	noiseChainKey = blake2s.Sum256([]byte("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"))
	h, _ := blake2s.New256(nil)
	h.Write(noiseChainKey[:])
	h.Write([]byte("WireGuard v1 zx2c4 Jason@zx2c4.com"))
	h.Sum(noiseHash[:0])
}

type initiation struct {
	msg  [initiationSize]byte
	from netip.AddrPort
}

// handshakeWatch reads initiations for one device.
type handshakeWatch struct {
	priv, pub Key
	mac1Key   [blake2s.Size]byte
	isPeer    func(Key) bool
	report    func(RefusedHandshake)

	queue chan initiation
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once

	mu       sync.Mutex
	seen     map[netip.AddrPort]time.Time // sources handled lately
	answered map[netip.AddrPort]time.Time // sources the device answered
	tokens   float64
	last     time.Time
}

func newHandshakeWatch(priv Key, isPeer func(Key) bool, report func(RefusedHandshake)) *handshakeWatch {
	w := &handshakeWatch{priv: priv, pub: priv.PublicKey(), isPeer: isPeer, report: report,
		queue: make(chan initiation, refusedQueue), stop: make(chan struct{}), done: make(chan struct{}),
		seen: make(map[netip.AddrPort]time.Time), answered: make(map[netip.AddrPort]time.Time), tokens: refusedBurst}
	h, _ := blake2s.New256(nil)
	h.Write([]byte("mac1----"))
	h.Write(w.pub[:])
	h.Sum(w.mac1Key[:0])
	go w.run()
	return w
}

// offer is called on the receive path for every packet: all but
// handshake initiations return at the first comparison.
func (w *handshakeWatch) offer(b []byte, ep conn.Endpoint) {
	if len(b) != initiationSize || binary.LittleEndian.Uint32(b) != initiationType {
		return
	}
	from := endpointAddr(ep)
	now := time.Now()
	w.mu.Lock()
	if t, ok := w.seen[from]; ok && now.Sub(t) < refusedInterval {
		w.mu.Unlock()
		return
	}
	if t, ok := w.answered[from]; ok && now.Sub(t) < answeredFor {
		w.mu.Unlock()
		return
	}
	if d := now.Sub(w.last); d > 0 {
		w.tokens = min(refusedBurst, w.tokens+d.Seconds()*refusedRate)
		w.last = now
	}
	if w.tokens < 1 || !w.remember(from, now) {
		w.mu.Unlock()
		return
	}
	w.tokens--
	w.mu.Unlock()
	in := initiation{from: from}
	copy(in.msg[:], b)
	select {
	case w.queue <- in:
	default:
	}
}

// remember notes a source as handled at now; false if the table is full
// of sources handled within the interval. w.mu is held.
func (w *handshakeWatch) remember(from netip.AddrPort, now time.Time) bool {
	return note(w.seen, from, now, refusedInterval)
}

// note sets m[from] = now, first dropping entries older than keep when
// m is full; false if it stays full.
func note(m map[netip.AddrPort]time.Time, from netip.AddrPort, now time.Time, keep time.Duration) bool {
	if _, ok := m[from]; !ok && len(m) >= refusedSources {
		for a, t := range m {
			if now.Sub(t) >= keep {
				delete(m, a)
			}
		}
		if len(m) >= refusedSources {
			return false
		}
	}
	m[from] = now
	return true
}

// sent is called for each Send of the device: wireguard-go sends each
// handshake message alone, so one comparison tells a batch of data
// packets apart. A response means the source's key is a peer.
func (w *handshakeWatch) sent(bufs [][]byte, ep conn.Endpoint) {
	if len(bufs) != 1 || len(bufs[0]) != responseSize || binary.LittleEndian.Uint32(bufs[0]) != responseType {
		return
	}
	from := endpointAddr(ep)
	w.mu.Lock()
	note(w.answered, from, time.Now(), answeredFor)
	w.mu.Unlock()
}

// peersChanged forgets which sources were answered: a removed peer's
// next initiation is looked at again.
func (w *handshakeWatch) peersChanged() {
	w.mu.Lock()
	clear(w.answered)
	w.mu.Unlock()
}

// forget lets a source's next initiation be looked at again: one that was
// accepted says nothing about the next (the peer may be removed).
func (w *handshakeWatch) forget(from netip.AddrPort) {
	w.mu.Lock()
	delete(w.seen, from)
	w.mu.Unlock()
}

func endpointAddr(ep conn.Endpoint) netip.AddrPort {
	// Our Linux bind's endpoint gives it without a round trip through text.
	if e, ok := ep.(interface{ dstAddrPort() netip.AddrPort }); ok {
		return e.dstAddrPort()
	}
	ap, _ := netip.ParseAddrPort(ep.DstToString())
	return ap
}

func (w *handshakeWatch) run() {
	defer close(w.done)
	for {
		select {
		case <-w.stop:
			return
		case in := <-w.queue:
			if r, refused := w.judge(&in); refused {
				w.report(r)
			} else {
				w.forget(in.from)
			}
		}
	}
}

// judge decides whether the device refuses an initiation.
func (w *handshakeWatch) judge(in *initiation) (RefusedHandshake, bool) {
	msg := in.msg[:]
	r := RefusedHandshake{From: in.from}
	const (
		ephemeralAt = 8
		staticAt    = ephemeralAt + KeyLen
		staticLen   = KeyLen + chacha20poly1305.Overhead
		mac1At      = initiationSize - 2*blake2s.Size128
	)
	mac, _ := blake2s.New128(w.mac1Key[:])
	mac.Write(msg[:mac1At])
	if !hmac.Equal(mac.Sum(nil), msg[mac1At:mac1At+blake2s.Size128]) {
		r.WrongKey = true
		return r, true
	}
	// The responder's side of the IK pattern, up to the initiator's
	// static key: h = HASH(h || S_r), h = HASH(h || E_i),
	// (ck, k) = KDF2(KDF1(ck, E_i), DH(s_r, E_i)), S_i = AEAD(k, 0, h).
	ephemeral := msg[ephemeralAt:staticAt]
	h := mixHash(noiseHash[:], w.pub[:])
	h = mixHash(h[:], ephemeral)
	ck := noiseChainKey
	kdf(ck[:], ephemeral, &ck, nil)
	ss, err := curve25519.X25519(w.priv[:], ephemeral)
	if err != nil {
		return r, false // a low-order point: wireguard-go drops it too
	}
	var key [blake2s.Size]byte
	kdf(ck[:], ss, &ck, &key)
	aead, _ := chacha20poly1305.New(key[:])
	var nonce [chacha20poly1305.NonceSize]byte
	pub, err := aead.Open(nil, nonce[:], msg[staticAt:staticAt+staticLen], h[:])
	if err != nil || len(pub) != KeyLen {
		return r, false
	}
	copy(r.PublicKey[:], pub)
	if w.isPeer(r.PublicKey) {
		return r, false
	}
	return r, true
}

func mixHash(h, data []byte) [blake2s.Size]byte {
	var out [blake2s.Size]byte
	d, _ := blake2s.New256(nil)
	d.Write(h)
	d.Write(data)
	d.Sum(out[:0])
	return out
}

// kdf is WireGuard's HKDF over HMAC-BLAKE2s: t0 (and t1, if not nil)
// from the chaining key ck and input. ck may be t0's own array.
func kdf(ck, input []byte, t0, t1 *[blake2s.Size]byte) {
	newHash := func() hash.Hash { d, _ := blake2s.New256(nil); return d }
	m := hmac.New(newHash, ck)
	m.Write(input)
	prk := m.Sum(nil)
	m = hmac.New(newHash, prk)
	m.Write([]byte{1})
	first := m.Sum(nil)
	if t1 != nil {
		m = hmac.New(newHash, prk)
		m.Write(first)
		m.Write([]byte{2})
		m.Sum(t1[:0])
	}
	copy(t0[:], first)
}

func (w *handshakeWatch) close() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// watchBind is a conn.Bind whose received packets pass the watch.
type watchBind struct {
	conn.Bind
	w *handshakeWatch
}

func (b *watchBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.w.sent(bufs, ep)
	return b.Bind.Send(bufs, ep)
}

func (b *watchBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	out := make([]conn.ReceiveFunc, len(fns))
	for i, f := range fns {
		out[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := f(bufs, sizes, eps)
			for j := range n {
				if sizes[j] == initiationSize {
					b.w.offer(bufs[j][:initiationSize], eps[j])
				}
			}
			return n, err
		}
	}
	return out, actual, nil
}

package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/forward"
)

// metrics are the server's Prometheus metrics. Byte counters are payload
// bytes, counted as they are written, so long-lived connections stay current.
type metrics struct {
	reg          *prometheus.Registry
	ingressBytes *prometheus.CounterVec
	egressBytes  *prometheus.CounterVec
	active       *prometheus.GaugeVec
	total        *prometheus.CounterVec
	rejected     *prometheus.CounterVec

	udpDatagrams  *prometheus.CounterVec
	udpBytes      *prometheus.CounterVec
	udpActive     *prometheus.GaugeVec
	udpSessions   *prometheus.CounterVec
	udpRefused    *prometheus.CounterVec
	udpDropped    *prometheus.CounterVec
	udpFragmented *prometheus.CounterVec
}

func newMetrics(clients func() map[string]control.ClientStatus) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		ingressBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threshold_ingress_bytes_total",
			Help: "Payload bytes of public connections, by tunnel, client and direction (in: from the internet user, out: to them).",
		}, []string{"tunnel", "client", "direction"}),
		egressBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threshold_egress_bytes_total",
			Help: "SOCKS5 egress payload bytes, by client and direction (out: sent by the client to destinations, in: received from them).",
		}, []string{"client", "direction"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "threshold_connections_active",
			Help: "Public connections being proxied, by tunnel.",
		}, []string{"tunnel"}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threshold_connections_total",
			Help: "Public connections handed to a client, by tunnel.",
		}, []string{"tunnel"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threshold_connections_rejected_total",
			Help: "Public connections refused, by reason.",
		}, []string{"reason"}),
	}
	m.newUDPMetrics()
	for _, r := range forward.RejectReasons {
		m.rejected.WithLabelValues(r) // so every reason shows, at 0
	}
	m.reg.MustRegister(m.ingressBytes, m.egressBytes, m.active, m.total, m.rejected,
		m.udpDatagrams, m.udpBytes, m.udpActive, m.udpSessions, m.udpRefused, m.udpDropped, m.udpFragmented,
		clientCollector{clients: clients},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

type connMeter struct {
	in, out prometheus.Counter
	active  prometheus.Gauge
}

func (c connMeter) In(n int64)  { c.in.Add(float64(n)) }
func (c connMeter) Out(n int64) { c.out.Add(float64(n)) }
func (c connMeter) Done()       { c.active.Dec() }

// observe meters one public connection; labels are bound once, not per write.
func (m *metrics) observe(t forward.Tunnel, client string) forward.ConnObserver {
	route := t.RouteKey()
	m.total.WithLabelValues(route).Inc()
	active := m.active.WithLabelValues(route)
	active.Inc()
	return connMeter{
		in:     m.ingressBytes.WithLabelValues(route, client, "in"),
		out:    m.ingressBytes.WithLabelValues(route, client, "out"),
		active: active,
	}
}

func (m *metrics) egressMeter(client string) (sent, received prometheus.Counter) {
	return m.egressBytes.WithLabelValues(client, "out"), m.egressBytes.WithLabelValues(client, "in")
}

// clientCollector reports each client's state when scraped.
type clientCollector struct {
	clients func() map[string]control.ClientStatus
}

var (
	clientConnectedDesc = prometheus.NewDesc("threshold_client_connected",
		"1 while the client is connected (answering heartbeats), else 0.", []string{"client"}, nil)
	clientHandshakeDesc = prometheus.NewDesc("threshold_client_last_handshake_age_seconds",
		"Seconds since the client's last WireGuard handshake (absent before the first).", []string{"client"}, nil)
	clientWireguardDesc = prometheus.NewDesc("threshold_client_wireguard_bytes_total",
		"WireGuard's encrypted byte counters for the client's peer, by direction.", []string{"client", "direction"}, nil)
)

func (c clientCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- clientConnectedDesc
	ch <- clientHandshakeDesc
	ch <- clientWireguardDesc
}

func (c clientCollector) Collect(ch chan<- prometheus.Metric) {
	for id, st := range c.clients() {
		up := 0.0
		if st.CurrentState == control.ClientConnected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(clientConnectedDesc, prometheus.GaugeValue, up, id)
		if st.LastHandshake != nil {
			ch <- prometheus.MustNewConstMetric(clientHandshakeDesc, prometheus.GaugeValue, time.Since(*st.LastHandshake).Seconds(), id)
		}
		ch <- prometheus.MustNewConstMetric(clientWireguardDesc, prometheus.CounterValue, float64(st.BytesIn), id, "in")
		ch <- prometheus.MustNewConstMetric(clientWireguardDesc, prometheus.CounterValue, float64(st.BytesOut), id, "out")
	}
}

func (m *metrics) newUDPMetrics() {
	m.udpDatagrams = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "threshold_udp_datagrams_total",
		Help: "Datagrams relayed by UDP tunnels, by tunnel and direction (in: from the internet user, out: to them).",
	}, []string{"tunnel", "direction"})
	m.udpBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "threshold_udp_bytes_total",
		Help: "Payload bytes relayed by UDP tunnels, by tunnel and direction.",
	}, []string{"tunnel", "direction"})
	m.udpActive = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "threshold_udp_sessions_active",
		Help: "Live UDP sessions (one per public source address), by tunnel.",
	}, []string{"tunnel"})
	m.udpSessions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "threshold_udp_sessions_total",
		Help: "UDP sessions started, by tunnel.",
	}, []string{"tunnel"})
	m.udpRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "threshold_udp_sessions_refused_total",
		Help: "New UDP sources refused, by tunnel and reason; a source that keeps sending while refused counts once per datagram.",
	}, []string{"tunnel", "reason"})
	m.udpDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "threshold_udp_datagrams_dropped_total",
		Help: "Datagrams dropped by UDP tunnels, by tunnel and reason (oversized: too large for UDP once framed).",
	}, []string{"tunnel", "reason"})
	m.udpFragmented = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "threshold_udp_datagrams_fragmented_total",
		Help: "Datagrams larger than the tunnel MTU, fragmented and reassembled inside the tunnel, by tunnel.",
	}, []string{"tunnel"})
}

// udpMeter meters one UDP tunnel; its counters are bound once, not per
// datagram.
type udpMeter struct {
	in, out, inBytes, outBytes prometheus.Counter
	active                     prometheus.Gauge
	started, fragmented        prometheus.Counter
	refused, dropped           map[string]prometheus.Counter
}

func (u *udpMeter) In(n int)         { u.in.Inc(); u.inBytes.Add(float64(n)) }
func (u *udpMeter) Out(n int)        { u.out.Inc(); u.outBytes.Add(float64(n)) }
func (u *udpMeter) SessionStarted()  { u.started.Inc(); u.active.Inc() }
func (u *udpMeter) SessionEnded()    { u.active.Dec() }
func (u *udpMeter) Fragmented()      { u.fragmented.Inc() }
func (u *udpMeter) Refused(r string) { u.refused[r].Inc() }
func (u *udpMeter) Dropped(r string) { u.dropped[r].Inc() }

// observeUDP meters one UDP tunnel's listener.
func (m *metrics) observeUDP(t forward.Tunnel) forward.UDPObserver {
	k := t.RouteKey()
	u := &udpMeter{
		in:         m.udpDatagrams.WithLabelValues(k, "in"),
		out:        m.udpDatagrams.WithLabelValues(k, "out"),
		inBytes:    m.udpBytes.WithLabelValues(k, "in"),
		outBytes:   m.udpBytes.WithLabelValues(k, "out"),
		active:     m.udpActive.WithLabelValues(k),
		started:    m.udpSessions.WithLabelValues(k),
		fragmented: m.udpFragmented.WithLabelValues(k),
		refused:    map[string]prometheus.Counter{},
		dropped:    map[string]prometheus.Counter{},
	}
	for _, r := range forward.UDPRejectReasons {
		u.refused[r] = m.udpRefused.WithLabelValues(k, r)
	}
	for _, r := range forward.UDPDropReasons {
		u.dropped[r] = m.udpDropped.WithLabelValues(k, r)
	}
	return u
}

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
	for _, r := range forward.RejectReasons {
		m.rejected.WithLabelValues(r) // so every reason shows, at 0
	}
	m.reg.MustRegister(m.ingressBytes, m.egressBytes, m.active, m.total, m.rejected,
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

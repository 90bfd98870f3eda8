package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/thresholdtunnel/threshold/client"
	"github.com/thresholdtunnel/threshold/control"
)

const statusUsage = `Usage:
  threshold status --config server.json     on the server
  threshold status --config client.json     on the client
  threshold status --management URL [API flags]
  threshold status --client 127.0.0.1:9058

On the server: the clients and their states, the tunnels with the client
their connections go to and their last refusal, from the management API
(the same credentials as the config). On the client: the servers, their
handshakes, the services and where SOCKS5 egress leaves, from the client's
status endpoint (StatusListenAddress in client.json).

`

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var api apiFlags
	api.register(fs)
	clientAddr := fs.String("client", "", "a client's status endpoint (its StatusListenAddress)")
	fs.Usage = func() {
		fmt.Fprint(stderr, statusUsage)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if *clientAddr == "" && api.config != "" {
		isClient, addr, err := clientConfigStatus(api.config)
		if err != nil {
			printError(stderr, "threshold status", err)
			return 2
		}
		if isClient {
			*clientAddr = addr
		}
	}
	var err error
	if *clientAddr != "" {
		err = clientStatus(ctx, *clientAddr, stdout)
	} else {
		var c *apiClient
		if c, err = api.client(); err == nil {
			err = serverStatus(ctx, c, stdout)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "threshold status: %v\n", err)
		return 1
	}
	return 0
}

// clientConfigStatus tells a client config from a server's and returns a
// client's status address.
func clientConfigStatus(path string) (isClient bool, addr string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, "", fmt.Errorf("reading config: %w", err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return false, "", fmt.Errorf("config %s: %w", path, err)
	}
	_, isClient = fields["ServiceToLocalAddrMap"]
	if !isClient {
		return false, "", nil
	}
	var cfg client.Config
	if err := loadConfig(path, &cfg, func() error { return client.Check(cfg) }); err != nil {
		return true, "", err
	}
	if cfg.StatusListenAddress == "" {
		return true, "", fmt.Errorf("%s has no StatusListenAddress: set it (for example \"127.0.0.1:9058\") and restart the client", path)
	}
	return true, cfg.StatusListenAddress, nil
}

func clientStatus(ctx context.Context, addr string, stdout io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/status", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		return fmt.Errorf("asking the client: %w (is it running, with StatusListenAddress %s?)", err, addr)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the client answered %d: %s", resp.StatusCode, strings.TrimSpace(string(data)))
	}
	var st client.Status
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("the client's answer: %w", err)
	}
	printClientStatus(stdout, st, time.Now())
	return nil
}

func printClientStatus(out io.Writer, st client.Status, now time.Time) {
	fmt.Fprintf(out, "client: %s\n  public key: %s\n  tunnel address: %s\n\n", st.ClientId, st.PublicKey, st.TunnelAddress)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SERVER\tENDPOINT\tSTATE\tLATEST HANDSHAKE\tTRANSFER\tCONNECTIONS")
	for _, s := range st.Servers {
		ep := s.Endpoint
		if ep == "" {
			ep = "-"
		}
		state := fmt.Sprintf("%s %s", s.State, since(now, s.Since))
		if s.LastError != "" {
			state += ": " + s.LastError
		}
		fmt.Fprintf(w, "%s:%d\t%s\t%s\t%s\t%s\t%d\n", s.ServerHost, s.ServerTunnelControlPort, ep, state,
			ago(now, s.LastHandshake), transfer(s.BytesIn, s.BytesOut), s.Connections+s.UDPSessions+s.Socks5Connections)
	}
	w.Flush()
	for _, s := range st.Servers {
		if s.ProxyRefused > 0 {
			fmt.Fprintf(out, "%s:%d: %d connections or UDP sessions refused by the PROXY choice or source policy (see the client's log)\n",
				s.ServerHost, s.ServerTunnelControlPort, s.ProxyRefused)
		}
	}
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SERVICE\tADDRESS")
	for _, s := range st.Services {
		fmt.Fprintf(w, "%s\t%s\n", s.Name, s.Address)
	}
	w.Flush()
	if st.Socks5 != nil {
		via := st.Socks5.Current
		if via == "" {
			via = "no server (none is connected)"
		}
		fmt.Fprintf(out, "\nsocks5: %s leaves from %s (order: %s)\n", st.Socks5.ListenAddress, via, strings.Join(st.Socks5.Order, ", "))
	}
}

// tunnelStatus is a tunnel of GET /tunnels, with its last refusal.
type tunnelStatus struct {
	ListenAddress      string
	ListenPort         int
	ListenHostnameGlob string
	Protocol           string
	BackEndService     string
	ClientId           string
	ClientIds          []string
	ActiveClientId     string
	LastRefusal        string
	LastRefusalReason  string
	LastRefusalAt      *time.Time
}

func serverStatus(ctx context.Context, c *apiClient, stdout io.Writer) error {
	var clients map[string]control.ClientStatus
	if err := c.do(ctx, "GET", "/clients", nil, &clients); err != nil {
		return err
	}
	var tunnels []tunnelStatus
	if err := c.do(ctx, "GET", "/tunnels", nil, &tunnels); err != nil {
		return err
	}
	printServerStatus(stdout, c.base, clients, tunnels, time.Now())
	return nil
}

var stateNames = map[control.State]string{
	control.ClientUnknown:      "never seen",
	control.ClientConnected:    "connected",
	control.ClientDisconnected: "disconnected",
}

func printServerStatus(out io.Writer, api string, clients map[string]control.ClientStatus, tunnels []tunnelStatus, now time.Time) {
	fmt.Fprintf(out, "server: %s\n\n", api)
	ids := make([]string, 0, len(clients))
	for id := range clients {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CLIENT\tSTATE\tLATEST HANDSHAKE\tTRANSFER\tTUNNEL ADDRESS\tPUBLIC KEY")
	for _, id := range ids {
		c := clients[id]
		state, ok := stateNames[c.CurrentState]
		if !ok {
			state = string(c.CurrentState)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", id, state, ago(now, c.LastHandshake), transfer(c.BytesIn, c.BytesOut), dash(c.TunnelAddress), dash(c.PublicKey))
	}
	if len(ids) == 0 {
		fmt.Fprintln(w, "(none)")
	}
	w.Flush()
	for _, id := range ids {
		if other := clients[id].ReportedClientId; other != "" {
			fmt.Fprintf(out, "note: %s calls itself %q (the ClientId in its client.json)\n", id, other)
		}
	}
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TUNNEL\tSERVICE\tCLIENTS\tACTIVE\tLAST REFUSAL")
	for _, t := range tunnels {
		name := fmt.Sprintf("%s:%d %s", t.ListenAddress, t.ListenPort, t.ListenHostnameGlob)
		if t.ListenAddress == "" {
			name = fmt.Sprintf("*:%d %s", t.ListenPort, t.ListenHostnameGlob)
		}
		if t.Protocol != "" && t.Protocol != "tcp" {
			name += " " + t.Protocol
		}
		list := t.ClientIds
		if len(list) == 0 && t.ClientId != "" {
			list = []string{t.ClientId}
		}
		active := t.ActiveClientId
		if active == "" {
			active = "none connected"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", name, t.BackEndService, strings.Join(list, ","), active, t.lastRefusal(now))
	}
	if len(tunnels) == 0 {
		fmt.Fprintln(w, "(none)")
	}
	w.Flush()
}

func (t tunnelStatus) lastRefusal(now time.Time) string {
	what := t.LastRefusalReason
	if what == "" {
		what = t.LastRefusal
	}
	if what == "" {
		return "-"
	}
	if t.LastRefusalAt != nil {
		what += ", " + ago(now, t.LastRefusalAt)
	}
	return what
}

// ago says how long ago t was, as wg show does (shorter); "-" for never.
func ago(now time.Time, t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return duration(now.Sub(*t)) + " ago"
}

func since(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return "for " + duration(now.Sub(t))
}

func duration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm %ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh %dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd %dh", s/86400, s%86400/3600)
}

func transfer(in, out uint64) string {
	if in == 0 && out == 0 {
		return "-"
	}
	return bytesString(in) + " received, " + bytesString(out) + " sent"
}

func bytesString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/mgmt"
)

const checkUsage = `Usage:
  threshold check HOST:PORT [--tls-name NAME] [API flags]
  threshold check [API flags]

With HOST:PORT, run from any machine outside: proves that a user there
reaches the tunnel on PORT, through the public port, the firewalls on the
way and the tunnel to its client. It asks the management API for a one-time
token for the tunnel, connects to HOST:PORT like a user and sends a probe
carrying the token (a TLS ClientHello naming --tls-name, on a port that
routes by host name); the server answers the probe through the tunnel
instead of passing it on, and the client answers it without passing it to
its service, then tries the service with one connect. Nothing reaches the
service but that connect.

Without HOST:PORT: the server checks every tunnel through its client
(POST /tunnels/check) and the results are listed.

Exit status 0 when every check passed, 1 otherwise.

`

// hints say what to look at for each reason a check fails.
var checkHints = map[string]string{
	forward.CheckNoClient:           "none of the tunnel's clients is connected: see threshold status on the server, and the client's log",
	forward.CheckClientUnreachable:  "the client is judged connected but did not answer through the tunnel: it may have just gone away",
	forward.CheckClientRefused:      "the client refused the check: update it (clients older than checks refuse them)",
	forward.CheckUnknownService:     "the client has no such service: add it to the client's ServiceToLocalAddrMap, or fix the tunnel's BackEndService",
	forward.CheckBackendRefused:     "the service refused the connection: it is not running, or listens on another address or port than ServiceToLocalAddrMap says",
	forward.CheckBackendTimeout:     "the service did not answer: a firewall on the client's side, or an address that is not there",
	forward.CheckBackendUnreachable: "the client cannot reach the service's address",
	forward.CheckWrongTunnel:        "the probe went to another tunnel on that port: give the host name users connect with as --tls-name",
	forward.CheckProxyRefused:       "the client refuses this tunnel's connections by its PROXY choice for the service: make the tunnel's HaProxyProxyProtocol match the service's ProxyProtocol in the client's ServiceToLocalAddrMap (or, for UDP, use 2)",
}

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	var api apiFlags
	api.register(fs)
	tlsName := fs.String("tls-name", "", "host name the probe's TLS ClientHello names (SNI), for a port that routes by host name")
	listenAddr := fs.String("listen-address", "", "the tunnel's ListenAddress, when tunnels listen on PORT at several addresses")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	fs.Usage = func() {
		fmt.Fprint(stderr, checkUsage)
		fs.PrintDefaults()
	}
	fs.SetOutput(stderr)
	// Flags may come after HOST:PORT.
	var target string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		target, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		if target != "" || fs.NArg() > 1 {
			fmt.Fprintf(stderr, "threshold check: unexpected argument %q\n", fs.Arg(fs.NArg()-1))
			return 2
		}
		target = fs.Arg(0)
	}
	c, err := api.client()
	if err != nil {
		fmt.Fprintf(stderr, "threshold check: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if target == "" {
		return checkAll(ctx, c, stdout, stderr)
	}
	host, portStr, err := net.SplitHostPort(target)
	port, perr := strconv.Atoi(portStr)
	if err != nil || perr != nil || port < 1 || port > 65535 || host == "" {
		fmt.Fprintf(stderr, "threshold check: %q is not HOST:PORT\n", target)
		return 2
	}
	res, err := probe(ctx, c, target, forward.ArmRequest{ListenAddress: *listenAddr, ListenPort: port, Hostname: *tlsName})
	if err != nil {
		fmt.Fprintf(stderr, "threshold check: %s: FAILED: %v\n", target, err)
		return 1
	}
	if !res.OK {
		fmt.Fprintf(stdout, "%s: FAILED: %s\n", target, describeFailure(res))
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok: the token came back from client %q through tunnel %s -> %s\n", target, res.ClientId, res.Tunnel.RouteKey(), res.Tunnel.BackEndService)
	fmt.Fprintf(stdout, "  round trip through the tunnel %.2f ms; the client connected to %s in %.2f ms\n", res.RoundTripMillis, res.Tunnel.BackEndService, res.BackendMillis)
	return 0
}

func describeFailure(res forward.CheckResult) string {
	s := res.Reason
	if res.ClientId != "" {
		s += fmt.Sprintf(" (client %q)", res.ClientId)
	}
	if res.Error != "" {
		s += ": " + res.Error
	}
	if h := checkHints[res.Reason]; h != "" {
		s += "\n  " + h
	}
	return s
}

// probe arms a token, connects to target like a user, sends the probe
// and reads the answer; it fails when the answer is not the token back.
func probe(ctx context.Context, c *apiClient, target string, req forward.ArmRequest) (forward.CheckResult, error) {
	var armed forward.ArmedCheck
	asked := time.Now()
	if err := c.do(ctx, "POST", "/tunnels/check/arm", req, &armed); err != nil {
		return forward.CheckResult{}, err
	}
	// Send the probe only while the token is surely good: a probe the
	// server no longer expects is cut, unanswered (never passed on).
	deadline := asked.Add(time.Duration(armed.ExpiresInSeconds*float64(time.Second)) - 2*time.Second)
	var msg []byte
	switch armed.Probe {
	case "tls":
		var err error
		if msg, err = forward.ProbeClientHello(req.Hostname, armed.Token); err != nil {
			return forward.CheckResult{}, err
		}
	case "line":
		msg = forward.ProbeLine(armed.Token)
	default:
		return forward.CheckResult{}, fmt.Errorf("the server asked for a probe of kind %q, which this threshold does not know", armed.Probe)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", target)
	if err != nil {
		return forward.CheckResult{}, fmt.Errorf("cannot connect: %w\n  the port is closed or filtered on the way (the VM's firewall or security group), or HOST is not the server", err)
	}
	defer conn.Close()
	if time.Now().After(deadline) {
		return forward.CheckResult{}, errors.New("connecting took too long to send the probe in time")
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(msg); err != nil {
		return forward.CheckResult{}, fmt.Errorf("sending the probe: %w", err)
	}
	line, err := bufio.NewReader(io.LimitReader(conn, 64<<10)).ReadString('\n')
	if err != nil && line == "" {
		return forward.CheckResult{}, fmt.Errorf("the connection ended without an answer (%v)\n  the probe did not reach the tunnel it was armed for: another machine answers at %s (a proxy or load balancer in front?), or the server cut it", err, target)
	}
	res, err := forward.ParseProbeAnswer([]byte(line))
	if err != nil {
		return forward.CheckResult{}, fmt.Errorf("something else answered (%.60q): is %s the threshold server?", line, target)
	}
	if res.Reason == "" && res.Token != armed.Token {
		return res, fmt.Errorf("the answer carries another token than was armed")
	}
	return res, nil
}

// checkAll has the server check every tunnel and lists the results.
func checkAll(ctx context.Context, c *apiClient, stdout, stderr io.Writer) int {
	var reply mgmt.CheckReply
	if err := c.do(ctx, "POST", "/tunnels/check", nil, &reply); err != nil {
		fmt.Fprintf(stderr, "threshold check: %v\n", err)
		return 1
	}
	if len(reply.Results) == 0 {
		fmt.Fprintln(stdout, "no tunnels")
		return 0
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TUNNEL\tSERVICE\tCLIENT\tRESULT\tROUND TRIP\tBACKEND")
	for _, r := range reply.Results {
		result := "ok"
		if !r.OK {
			result = r.Reason
		}
		client := r.ClientId
		if client == "" {
			client = "-"
		}
		rt, be := "-", "-"
		if r.RoundTripMillis > 0 {
			rt = fmt.Sprintf("%.2f ms", r.RoundTripMillis)
		}
		if r.BackendMillis > 0 {
			be = fmt.Sprintf("%.2f ms", r.BackendMillis)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Tunnel.RouteKey(), r.Tunnel.BackEndService, client, result, rt, be)
	}
	w.Flush()
	code := 0
	for _, r := range reply.Results {
		if !r.OK {
			code = 1
			fmt.Fprintf(stdout, "\n%s: %s\n", r.Tunnel.RouteKey(), describeFailure(r))
		}
	}
	return code
}

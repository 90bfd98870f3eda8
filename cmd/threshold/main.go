// Command threshold is a self-hosting gateway: a public server and a home
// client linked by a userspace WireGuard tunnel.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/thresholdtunnel/threshold/client"
	"github.com/thresholdtunnel/threshold/control"
	"github.com/thresholdtunnel/threshold/server"
	"github.com/thresholdtunnel/threshold/wg"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

const usage = `threshold: public gateway for self-hosted services over a userspace WireGuard tunnel

Usage:
  threshold server --config server.json   run the public server
  threshold client --config client.json   run the home client
  threshold genkey                        print a new private key (base64, as wg genkey)
  threshold pubkey < private.key          print the public key of a private key
  threshold status --config FILE          show a server's clients and tunnels, or a client's servers
  threshold check HOST:PORT               prove from outside that a public port reaches its tunnel's client
  threshold demo                          run the usage example end to end on loopback
  threshold version                       print the version
  threshold help                          print this help

Run "threshold <command> --help" for a command's options.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "server", "client":
		return runDaemon(cmd, rest, stderr)
	case "genkey":
		return runGenkey(rest, stdout, stderr)
	case "pubkey":
		return runPubkey(rest, stdin, stdout, stderr)
	case "demo":
		return runDemo(rest, stdout, stderr)
	case "status":
		return runStatus(rest, stdout, stderr)
	case "check":
		return runCheck(rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "threshold", versionString())
		return 0
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "threshold: unknown command %q\n\n%s", cmd, usage)
	return 2
}

// parseFlags parses a subcommand's flags; ok is false when the caller
// should return code (help printed, or a usage error).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "threshold %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}

func newLogger(w io.Writer, debugLog bool, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if debugLog {
		opts.Level = slog.LevelDebug
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func runDaemon(role string, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	configPath := fs.String("config", "", "path of the JSON config file (required, unless THRESHOLD_CONFIG is set)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: threshold %s --config %s.json\n\nRuns the threshold %s until SIGINT or SIGTERM.\n\n", role, role, role)
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\nEnvironment:\n  THRESHOLD_CONFIG\tconfig file path used when --config is not given\n\t\t\t(handy in containers: -e THRESHOLD_CONFIG=/etc/threshold/%s.json)\n", role)
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if *configPath == "" {
		*configPath = os.Getenv("THRESHOLD_CONFIG")
	}
	if *configPath == "" {
		fmt.Fprintf(stderr, "threshold %s: --config is required (or set THRESHOLD_CONFIG)\n", role)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if role == "server" {
		err = serve(ctx, *configPath, stderr)
	} else {
		err = connect(ctx, *configPath, stderr)
	}
	if err != nil {
		printError(stderr, "threshold "+role, err)
		return 1
	}
	return 0
}

// printError prints err, one problem a line when it lists several.
func printError(w io.Writer, prefix string, err error) {
	var p *control.Problems
	if errors.As(err, &p) {
		fmt.Fprintf(w, "%s: %s:\n", prefix, p.Title())
		for _, line := range p.Lines() {
			fmt.Fprintf(w, "  %s\n", line)
		}
		return
	}
	fmt.Fprintf(w, "%s: %v\n", prefix, err)
}

func serve(ctx context.Context, path string, stderr io.Writer) error {
	var cfg server.Config
	if err := loadConfig(path, &cfg, func() error { return server.Check(cfg) }); err != nil {
		return err
	}
	log := newLogger(stderr, cfg.DebugLog, cfg.LogFormat).With("role", "server")
	s, err := server.New(cfg, log)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

func connect(ctx context.Context, path string, stderr io.Writer) error {
	var cfg client.Config
	if err := loadConfig(path, &cfg, func() error { return client.Check(cfg) }); err != nil {
		return err
	}
	log := newLogger(stderr, cfg.DebugLog, cfg.LogFormat).With("role", "client")
	c, err := client.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return c.Run(ctx)
}

func runGenkey(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("genkey", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: threshold genkey > private.key\n\nPrints a new base64 WireGuard private key.")
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	k, err := wg.GenerateKey()
	if err != nil {
		fmt.Fprintf(stderr, "threshold genkey: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, k.String())
	return 0
}

func runPubkey(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pubkey", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: threshold pubkey < private.key\n\nReads a base64 private key on stdin and prints its public key.")
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	data, err := io.ReadAll(io.LimitReader(stdin, 4096))
	if err != nil {
		fmt.Fprintf(stderr, "threshold pubkey: reading stdin: %v\n", err)
		return 1
	}
	k, err := wg.ParseKey(strings.TrimSpace(string(data)))
	if err != nil {
		fmt.Fprintf(stderr, "threshold pubkey: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, k.PublicKey().String())
	return 0
}

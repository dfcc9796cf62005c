// Command tetragon-client is a small gRPC client built on Tetragon's own generated Go stubs
// (github.com/cilium/tetragon/api/v1/tetragon). The real tetra CLI cannot be built here (the Go
// module proxy does not serve Tetragon's main module, docs/api.md), so this checks lanner's gRPC API
// with the code Tetragon's clients are made of: the same message types, field numbers and protojson.
//
//	tetragon-client --server-address unix:///var/run/lanner/lanner.sock tracingpolicy list
//	tetragon-client getevents --process '/usr/bin/id$' --count 1
//	tetragon-client health
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	tetragon "github.com/cilium/tetragon/api/v1/tetragon"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const usage = `usage: tetragon-client [--server-address ADDR] [--timeout DURATION] COMMAND

Calls the agent's tetragon.FineGuidanceSensors service with Tetragon's generated Go stubs and prints
each answer as one line of protojson (proto field names), as decoded by those stubs. With --strict, a
field the stubs do not know (a field number lanner sends that Tetragon does not define) is an error
naming its place, exit status 3.

commands:
  health                       GetHealth
  version                      GetVersion
  tracingpolicy list           ListTracingPolicies
  getevents [--process REGEX] [--pid PID] [--count N] [--count-file PATH [--raw]]
                               GetEvents: stream events (only those whose binary matches REGEX
                               and/or of process PID), stop after N (0: until --timeout);
                               with --count-file, decode each event but print nothing: write
                               how many arrived to PATH every 100 ms and at the end (benchmarks);
                               --raw counts them without decoding

flags:
`

var (
	marshal = protojson.MarshalOptions{UseProtoNames: true}
	strict  = false
)

// errUnknown marks answers holding fields Tetragon's stubs do not define (--strict).
var errUnknown = errors.New("fields unknown to Tetragon's stubs")

func main() {
	flags := flag.NewFlagSet("tetragon-client", flag.ContinueOnError)
	flags.Usage = func() { fmt.Fprint(os.Stderr, usage); flags.PrintDefaults() }
	addr := flags.String("server-address", "unix:///var/run/lanner/lanner.sock", "the agent's gRPC address (unix:///path or host:port)")
	timeout := flags.Duration("timeout", 30*time.Second, "give up after this long")
	flags.BoolVar(&strict, "strict", false, "fail (exit 3) on fields Tetragon's stubs do not know")
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *addr, flags.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "tetragon-client:", err)
		if errors.Is(err, errUnknown) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, addr string, args []string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := tetragon.NewFineGuidanceSensorsClient(conn)
	switch {
	case len(args) == 1 && args[0] == "health":
		return printOne(client.GetHealth(ctx, &tetragon.GetHealthStatusRequest{}))
	case len(args) == 1 && args[0] == "version":
		return printOne(client.GetVersion(ctx, &tetragon.GetVersionRequest{}))
	case len(args) == 2 && args[0] == "tracingpolicy" && args[1] == "list":
		return printOne(client.ListTracingPolicies(ctx, &tetragon.ListTracingPoliciesRequest{}))
	case len(args) >= 1 && args[0] == "getevents":
		return getEvents(ctx, client, args[1:])
	}
	return fmt.Errorf("unknown command %q (see --help)", args)
}

func printOne[M proto.Message](msg M, err error) error {
	if err != nil {
		return err
	}
	out, err := marshal.Marshal(msg)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	if unknown := unknownFields(msg.ProtoReflect(), ""); strict && len(unknown) > 0 {
		return fmt.Errorf("%w: %v", errUnknown, unknown)
	}
	return nil
}

// unknownFields lists where a decoded message kept bytes its descriptor has no field for.
func unknownFields(m protoreflect.Message, path string) []string {
	var out []string
	if len(m.GetUnknown()) > 0 {
		out = append(out, path+"{?}")
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				out = append(out, unknownFields(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", name, i))...)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				out = append(out, unknownFields(mv.Message(), fmt.Sprintf("%s[%v]", name, k.Interface()))...)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			out = append(out, unknownFields(v.Message(), name)...)
		}
		return true
	})
	return out
}

func getEvents(ctx context.Context, client tetragon.FineGuidanceSensorsClient, args []string) error {
	flags := flag.NewFlagSet("getevents", flag.ContinueOnError)
	process := flags.String("process", "", "only events whose process binary matches this regex")
	pid := flags.Uint("pid", 0, "only events of this process id")
	count := flags.Int("count", 0, "stop after this many events (0: until --timeout)")
	countFile := flags.String("count-file", "", "count events into this file instead of printing them")
	raw := flags.Bool("raw", false, "with --count-file: count the messages without decoding them (what the "+
		"server delivers, without this client's protobuf decoding)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	filter := &tetragon.Filter{}
	if *process != "" {
		filter.BinaryRegex = []string{*process}
	}
	if *pid != 0 {
		filter.Pid = []uint32{uint32(*pid)}
	}
	req := &tetragon.GetEventsRequest{}
	if proto.Size(filter) > 0 {
		req.AllowList = []*tetragon.Filter{filter}
	}
	var opts []grpc.CallOption
	if *raw {
		opts = append(opts, grpc.ForceCodec(rawCodec{}))
	}
	stream, err := client.GetEvents(ctx, req, opts...)
	if err != nil {
		return err
	}
	if *countFile != "" {
		return countEvents(stream, *countFile, *count)
	}
	for seen := 0; *count == 0 || seen < *count; seen++ {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err := printOne(ev, err); err != nil {
			return err
		}
	}
	return nil
}

// rawCodec leaves received messages undecoded (getevents --raw); requests are marshalled as usual.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return proto.Marshal(v.(proto.Message)) }
func (rawCodec) Unmarshal(data []byte, v any) error { return nil }
func (rawCodec) Name() string                       { return "proto" }

// countEvents receives (and so decodes, with Tetragon's stubs) events without printing them, writing
// the number received so far to path every 100 ms (from a ticker: a burst's last events are counted even
// when nothing follows them) and once more when the stream ends.
func countEvents(stream tetragon.FineGuidanceSensors_GetEventsClient, path string, limit int) error {
	var n atomic.Int64
	write := func() { _ = os.WriteFile(path, []byte(fmt.Sprint(n.Load())), 0o644) }
	write()
	done := make(chan struct{})
	defer func() { close(done); write() }()
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				write()
			}
		}
	}()
	for limit == 0 || n.Load() < int64(limit) {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		n.Add(1)
	}
	return nil
}

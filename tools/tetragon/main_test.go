package main

import (
	"reflect"
	"testing"

	tetragon "github.com/cilium/tetragon/api/v1/tetragon"
	"google.golang.org/protobuf/encoding/protowire"
)

// A field number Tetragon does not define, nested two messages deep, is found and named.
func TestUnknownFieldsAreFoundWithTheirPath(t *testing.T) {
	ev := &tetragon.GetEventsResponse{Event: &tetragon.GetEventsResponse_ProcessExec{
		ProcessExec: &tetragon.ProcessExec{Process: &tetragon.Process{Binary: "/usr/bin/id"}}}}
	if got := unknownFields(ev.ProtoReflect(), ""); len(got) != 0 {
		t.Fatalf("a well-formed event has unknown fields: %v", got)
	}
	extra := protowire.AppendTag(nil, 999, protowire.VarintType)
	extra = protowire.AppendVarint(extra, 1)
	ev.GetProcessExec().GetProcess().ProtoReflect().SetUnknown(extra)
	want := []string{".process_exec.process{?}"}
	if got := unknownFields(ev.ProtoReflect(), ""); !reflect.DeepEqual(got, want) {
		t.Fatalf("unknownFields = %v, want %v", got, want)
	}
}

// Module tetragonclient builds a small gRPC client on Tetragon's own generated API stubs
// (github.com/cilium/tetragon/api) to check lanner's gRPC API from Go (make tetragon-client).
module github.com/lanner/tools/tetragon

go 1.26.0

require (
	github.com/cilium/tetragon/api v1.7.1
	google.golang.org/grpc v1.82.1
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af
)

require (
	golang.org/x/net v0.58.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.41.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260414002931-afd174a4e478 // indirect
)

// The main module is not on the proxy; its api module requires it (see stub/go.mod).
replace github.com/cilium/tetragon => ./stub

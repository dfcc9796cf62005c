// An empty stand-in for github.com/cilium/tetragon, which the Go module proxy does not serve
// (docs/api.md). Tetragon's api module requires it but its packages import nothing from it.
module github.com/cilium/tetragon

go 1.25.0

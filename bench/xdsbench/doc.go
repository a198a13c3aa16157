// Package xdsbench measures xDS servers the way a fleet of Envoys sees them.
//
// A run connects N simulated Envoys (test/adsclient in its Light mode: real
// ADS streams over gRPC, state-of-the-world or delta, each proxy on its own
// connection, subscribing and ACKing as Envoy does) to a server that holds S
// services of E endpoints, every proxy receiving every service (Consul's
// transparent mode; Bowline's all_services sidecars), proxy i fronting
// service i mod S. It then measures:
//
//   - initial sync: from the first dial until every proxy has ACKed every
//     service's endpoints;
//   - a change to one service's endpoints, and to every service's, made at
//     the source (a file renamed into Bowline's config directory, a Consul
//     transaction): from the change until each affected proxy has ACKed the
//     new ClusterLoadAssignment (p50, p99, max over proxies, pooled over
//     the repeats), with the server's CPU seconds and the bytes it sent;
//   - the server's RSS and live Go heap (after a forced GC) with N proxies
//     connected, minus the same with none, per proxy;
//   - a reconnect storm: the server is stopped (SIGTERM) and started again
//     with the same state; from its start until every proxy is back in sync.
//
// A proxy has applied a change when the ClusterLoadAssignment it holds
// carries the new generation: the last endpoint of each service listens on
// MarkerBase + the service's generation, read from the wire without
// decoding (see markerGeneration).
//
// Three peers run the same workload with the same proxies:
//
//   - bowline: xds/controlplane with the file registry, as `bowline server`
//     wires it;
//   - snapshotcache: the library baseline, Bowline's config directory, file
//     registry and catalog in front of a bare go-control-plane SnapshotCache
//     fed with translate.Build's resources;
//   - consul: Consul's own xDS server (delta only), following
//     shared/peers/consul-xds.md.
//
// Every server is a process of its own (Bowline and the baseline are this
// program run again, see ServeIfChild), so that its CPU and memory are
// measured apart from the proxies'; they share the machine's cores with the
// proxies unless pinned (cmd/xdsbench -pin), and the CPU the proxies and
// other processes used during each phase is recorded beside the figures.
// Everything listens on 127.0.0.1, and every phase is bounded in time.
//
// Results are JSON files (one per peer, protocol and point) that Render
// turns into the tables of docs/PERFORMANCE.md. bench/README.md tells how to
// run it.
package xdsbench

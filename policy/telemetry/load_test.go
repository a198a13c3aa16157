package telemetry_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/bowlinemesh/bowline/policy/telemetry"
	"github.com/bowlinemesh/bowline/policy/telemetry/telemetrytest"
)

// loadHCL is the test mesh with max_series = 10,000.
var loadHCL = telemetrytestMesh("10000")

func telemetrytestMesh(maxSeries string) string {
	return replaceOnce(telemetrytest.MeshHCL, "max_series = 1000", "max_series = "+maxSeries)
}

func replaceOnce(s, old, new string) string {
	for i := 0; i+len(old) <= len(s); i++ {
		if s[i:i+len(old)] == old {
			return s[:i] + new + s[i+len(old):]
		}
	}
	panic("replaceOnce: " + old + " not found")
}

// batch is what frontend's sidecar logs for n requests to orders, each with
// its own x-tenant header (set by fill).
func loadBatch(t testing.TB, mesh *telemetrytest.Mesh, n int) []*alsdata.HTTPAccessLogEntry {
	t.Helper()
	fe := mesh.Sidecars["frontend"]
	out := make([]*alsdata.HTTPAccessLogEntry, n)
	for i := range out {
		code := uint32(200)
		if i%50 == 0 {
			code = 503
		}
		e, err := fe.HTTPEntry(telemetrytest.Request{Upstream: "default/orders", UpstreamAddress: "10.0.0.2", UpstreamPort: 21000,
			PeerPrincipal: telemetrytest.Principal("orders"), Method: "GET", Path: "/api/orders", Code: code,
			Headers: map[string]string{"x-tenant": "t"}, Duration: time.Duration(1+i%40) * time.Millisecond, ReqBytes: 100, RespBytes: 1000}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		out[i] = e
	}
	return out
}

func fill(batch []*alsdata.HTTPAccessLogEntry, rng *rand.Rand) {
	for _, e := range batch {
		e.GetRequest().GetRequestHeaders()["x-tenant"] = strconv.FormatUint(rng.Uint64(), 36)
	}
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestCardinalityBounded sends 1,000,000 reports whose x-tenant header (a
// dimension) is random, under max_series = 10,000: the series stop at
// 10,000, the rest is counted as overflow, and the heap stays flat.
func TestCardinalityBounded(t *testing.T) {
	const (
		total     = 1_000_000
		maxSeries = 10_000
		batchSize = 1000
	)
	mesh, err := telemetrytest.NewMesh(loadHCL)
	if err != nil {
		t.Fatal(err)
	}
	svc := telemetry.New(telemetry.Options{})
	svc.Update(mesh.Config)
	svc.UpdateCatalog(mesh.Catalog)
	id := &accesslogv3.StreamAccessLogsMessage_Identifier{Node: mesh.Sidecars["frontend"].Node, LogName: telemetry.LogOutbound}
	batch := loadBatch(t, mesh, batchSize)
	rng := rand.New(rand.NewPCG(1, 2))

	var heaps []uint64
	start := heapAfterGC()
	for sent := 0; sent < total; sent += batchSize {
		fill(batch, rng)
		svc.IngestHTTP(id, batch)
		if done := sent + batchSize; done%(total/5) == 0 {
			h := heapAfterGC()
			heaps = append(heaps, h)
			t.Logf("%7d reports: %5d series, %7d in overflow, heap %.1f MiB (%+.1f MiB since the start)",
				done, svc.Metrics().Series(), svc.Metrics().Overflowed(), float64(h)/(1<<20), (float64(h)-float64(start))/(1<<20))
		}
	}
	if got := svc.Metrics().Series(); got != maxSeries {
		t.Fatalf("%d series, want %d", got, maxSeries)
	}
	// Every label set is new (random tenants): all but the first 10,000
	// reports fold into the overflow series.
	if got := svc.Metrics().Overflowed(); got != total-maxSeries {
		t.Fatalf("%d reports in overflow, want %d", got, total-maxSeries)
	}
	// Flat: once the cap is reached (after the first fifth), the heap does
	// not grow with the reports. The bound is generous: 16 MiB.
	if grown := int64(heaps[len(heaps)-1]) - int64(heaps[0]); grown > 16<<20 {
		t.Fatalf("heap grew by %d bytes between %d and %d reports: %v", grown, total/5, total, heaps)
	}
	out := gatherText(t, svc)
	if v, ok := metricValue(out, "bowline_telemetry_overflow_total", nil); !ok || v != fmt.Sprint(total-maxSeries) {
		t.Fatalf("bowline_telemetry_overflow_total = %q", v)
	}
	if v, ok := metricValue(out, "istio_requests_total", map[string]string{"tenant": telemetry.OverflowValue}); !ok || v != fmt.Sprint(total-maxSeries) {
		t.Fatalf("overflow series = %q %v", v, ok)
	}
}

// gatherText renders the service's collectors as /metrics does.
func gatherText(t testing.TB, svc *telemetry.Service) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(svc.Collectors()...)
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// BenchmarkIngest measures ingestion in process (attribution, metrics,
// graph, audit), per core: run with -cpu 1,2,4 and divide by the cores.
// series is the number of label sets the reports fall into.
func BenchmarkIngest(b *testing.B) {
	for _, series := range []int{10, 1000, 10000, 100000} {
		b.Run(fmt.Sprintf("series=%d", series), func(b *testing.B) {
			mesh, err := telemetrytest.NewMesh(telemetrytestMesh(strconv.Itoa(series)))
			if err != nil {
				b.Fatal(err)
			}
			svc := telemetry.New(telemetry.Options{})
			svc.Update(mesh.Config)
			svc.UpdateCatalog(mesh.Catalog)
			id := &accesslogv3.StreamAccessLogsMessage_Identifier{Node: mesh.Sidecars["frontend"].Node, LogName: telemetry.LogOutbound}
			const batchSize = 100
			// Batches whose tenants cycle over `series` values.
			var batches [][]*alsdata.HTTPAccessLogEntry
			for i := 0; i < max(1, series/batchSize); i++ {
				bt := loadBatch(b, mesh, batchSize)
				for j, e := range bt {
					e.GetRequest().GetRequestHeaders()["x-tenant"] = "tenant-" + strconv.Itoa((i*batchSize+j)%series)
				}
				batches = append(batches, bt)
			}
			b.ReportAllocs()
			cpuBefore := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					svc.IngestHTTP(id, batches[i%len(batches)])
					i++
				}
			})
			b.StopTimer()
			cpu := cpuTime() - cpuBefore
			b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "entries/s")
			b.ReportMetric(float64(b.N*batchSize)/cpu.Seconds(), "entries/cpu-s")
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(svc.Metrics().Series()), "series")
		})
	}
}

// BenchmarkSeriesMemory measures the heap that the service holds for a
// number of label sets (run with -benchtime 1x): the metrics' series and
// the graph, after that many distinct reports.
func BenchmarkSeriesMemory(b *testing.B) {
	for _, series := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("series=%d", series), func(b *testing.B) {
			mesh, err := telemetrytest.NewMesh(telemetrytestMesh(strconv.Itoa(series)))
			if err != nil {
				b.Fatal(err)
			}
			id := &accesslogv3.StreamAccessLogsMessage_Identifier{Node: mesh.Sidecars["frontend"].Node, LogName: telemetry.LogOutbound}
			batch := loadBatch(b, mesh, 1000)
			for range b.N {
				base := heapAfterGC()
				svc := telemetry.New(telemetry.Options{})
				svc.Update(mesh.Config)
				svc.UpdateCatalog(mesh.Catalog)
				for sent := 0; sent < series; sent += len(batch) {
					for j, e := range batch {
						e.GetRequest().GetRequestHeaders()["x-tenant"] = "tenant-" + strconv.Itoa(sent+j)
					}
					svc.IngestHTTP(id, batch)
				}
				held := heapAfterGC() - base
				if svc.Metrics().Series() != series {
					b.Fatalf("%d series", svc.Metrics().Series())
				}
				b.ReportMetric(float64(held)/(1<<20), "MiB")
				b.ReportMetric(float64(held)/float64(series), "B/series")
				runtime.KeepAlive(svc)
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkIngestGRPC measures ingestion over policyd's gRPC path: one
// ALS stream per parallel sender, batches of 100 entries (about what fits
// Envoy's 16 KiB buffer), on loopback. The senders send pre-encoded
// messages, so that the CPU measured is policyd's: entries/cpu-s is the
// rate per core, whatever else the machine runs.
func BenchmarkIngestGRPC(b *testing.B) {
	for _, series := range []int{20, 10000} {
		b.Run(fmt.Sprintf("series=%d", series), func(b *testing.B) { benchmarkIngestGRPC(b, series) })
	}
}

func benchmarkIngestGRPC(b *testing.B, series int) {
	mesh, err := telemetrytest.NewMesh(telemetrytestMesh("10000"))
	if err != nil {
		b.Fatal(err)
	}
	svc := telemetry.New(telemetry.Options{})
	svc.Update(mesh.Config)
	svc.UpdateCatalog(mesh.Catalog)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	svc.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	const batchSize = 100
	batch := loadBatch(b, mesh, batchSize)
	id := &accesslogv3.StreamAccessLogsMessage_Identifier{Node: mesh.Sidecars["frontend"].Node, LogName: telemetry.LogOutbound}
	// Messages whose tenants cycle over `series` values, pre-encoded.
	var msgs [][]byte
	for i := 0; i < max(1, series/batchSize); i++ {
		for j, e := range batch {
			e.GetRequest().GetRequestHeaders()["x-tenant"] = "tenant-" + strconv.Itoa((i*batchSize+j)%series)
		}
		raw, err := proto.Marshal(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch}}})
		if err != nil {
			b.Fatal(err)
		}
		msgs = append(msgs, raw)
	}
	first, err := proto.Marshal(&accesslogv3.StreamAccessLogsMessage{Identifier: id})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(msgs[0])))
	entriesBefore := svc.Entries()
	cpuBefore := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		stream, err := conn.NewStream(context.Background(), &grpc.StreamDesc{ClientStreams: true},
			accesslogv3.AccessLogService_StreamAccessLogs_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
		if err != nil {
			b.Error(err)
			return
		}
		if err := stream.SendMsg(first); err != nil { // the identifier
			b.Error(err)
			return
		}
		i := 0
		for pb.Next() {
			if err := stream.SendMsg(msgs[i%len(msgs)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
		if err := stream.CloseSend(); err != nil {
			b.Error(err)
		}
		var resp []byte
		if err := stream.RecvMsg(&resp); err != nil { // all ingested
			b.Error(err)
		}
	})
	b.StopTimer()
	cpu := cpuTime() - cpuBefore
	if got := svc.Entries() - entriesBefore; got != uint64(b.N*batchSize) {
		b.Fatalf("%d entries ingested, %d sent", got, b.N*batchSize)
	}
	b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(b.N*batchSize)/cpu.Seconds(), "entries/cpu-s")
	b.ReportMetric(float64(svc.Metrics().Series()), "series")
	b.ReportMetric(0, "ns/op")
}

// rawCodec sends pre-encoded protobuf messages.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// cpuTime is the CPU time this process has used (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

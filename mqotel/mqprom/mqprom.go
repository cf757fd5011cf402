// Package mqprom serves the metrics of package mqotel to Prometheus: an
// OpenTelemetry MeterProvider whose only reader is the OpenTelemetry
// Prometheus exporter, on a registry of its own, and the http.Handler
// that serves that registry. It is the only package of mqkit that links
// the OpenTelemetry SDK and the Prometheus client.
//
//	exp, err := mqprom.New(mqprom.WithServiceName("billing"))
//	inst := mqotel.New(mqotel.WithMeterProvider(exp.MeterProvider()))
//	http.Handle("/metrics", exp)
//
// Metric names follow the exporter's translation of the OpenTelemetry
// names: dots become underscores, the unit is appended ("_seconds") and
// counters end in "_total" (messaging_client_sent_messages_total,
// messaging_process_duration_seconds_bucket, mqkit_consumer_lag; the
// package documentation of mqotel lists them all). Attributes become
// labels the same way (messaging_destination_name,
// messaging_consumer_group_name, mqkit_outcome, error_type). Every series
// also carries otel_scope_name, and the resource is served as target_info.
package mqprom

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Exporter is a MeterProvider exported to Prometheus, and the handler that
// serves it. It is an http.Handler: mount it at /metrics.
type Exporter struct {
	mp  *sdkmetric.MeterProvider
	reg *prometheus.Registry
	h   http.Handler
}

// Option configures New.
type Option func(*config)

type config struct {
	res         *resource.Resource
	serviceName string
	reg         *prometheus.Registry
}

// WithServiceName sets the service.name of the resource (served as a
// label of target_info).
func WithServiceName(name string) Option { return func(c *config) { c.serviceName = name } }

// WithResource sets the resource the metrics describe. Default
// resource.Default() (service.name from OTEL_SERVICE_NAME, the SDK's
// attributes), with WithServiceName's name when given.
func WithResource(r *resource.Resource) Option { return func(c *config) { c.res = r } }

// WithRegistry makes the exporter register with, and serve, reg instead
// of a new registry: to serve other collectors (the Go runtime's, say) on
// the same endpoint.
func WithRegistry(reg *prometheus.Registry) Option { return func(c *config) { c.reg = reg } }

// New returns an Exporter: a MeterProvider read by the OpenTelemetry
// Prometheus exporter, registered on its own Prometheus registry (or
// WithRegistry's). Call Shutdown when done.
func New(opts ...Option) (*Exporter, error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.reg == nil {
		c.reg = prometheus.NewRegistry()
	}
	res := c.res
	if res == nil {
		res = resource.Default()
	}
	if c.serviceName != "" {
		named := resource.NewWithAttributes(semconv.SchemaURL, attribute.String(string(semconv.ServiceNameKey), c.serviceName))
		var err error
		if res, err = resource.Merge(res, named); err != nil {
			return nil, fmt.Errorf("mqprom: resource: %w", err)
		}
	}
	reader, err := otelprom.New(otelprom.WithRegisterer(c.reg))
	if err != nil {
		return nil, fmt.Errorf("mqprom: prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
	return &Exporter{
		mp:  mp,
		reg: c.reg,
		h:   promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{Registry: c.reg}),
	}, nil
}

// MeterProvider returns the provider to give to mqotel.WithMeterProvider
// (or otel.SetMeterProvider).
func (e *Exporter) MeterProvider() metric.MeterProvider { return e.mp }

// Registry returns the Prometheus registry the exporter serves.
func (e *Exporter) Registry() *prometheus.Registry { return e.reg }

// ServeHTTP serves the metrics in the Prometheus text (or OpenMetrics)
// format. Each request collects them: observable gauges, such as the lag
// that mqotel's ObserveLag reports, are polled then.
func (e *Exporter) ServeHTTP(w http.ResponseWriter, r *http.Request) { e.h.ServeHTTP(w, r) }

// Shutdown stops the MeterProvider; the handler then serves no metrics of
// it.
func (e *Exporter) Shutdown(ctx context.Context) error {
	if err := e.mp.Shutdown(ctx); err != nil && !errors.Is(err, sdkmetric.ErrReaderShutdown) {
		return fmt.Errorf("mqprom: shutdown: %w", err)
	}
	return nil
}

// Package typed puts typed payloads on mqkit messages: a [Codec] turns
// values of a Go type into message bodies and back, [Handler] decodes
// before calling a typed function, [Producer] encodes before producing,
// and [Binding] carries CloudEvents attributes in the message headers.
//
//	orders := typed.JSON[Order]()
//	h := typed.Handler(orders, func(ctx context.Context, o Order, m *mq.Message) error { ... })
//	p := &typed.Producer[Order]{Publisher: client.Producer(), Topic: "orders", Codec: orders}
//	err := p.Produce(ctx, Order{ID: "o-1"})
//
// # Codecs
//
// [JSON] uses encoding/json; [Proto] uses the Protocol Buffers binary
// format (google.golang.org/protobuf) for a generated message type. Both
// label the body with its media type in the [HeaderContentType] header
// ("application/json", "application/protobuf"). Any type implementing
// Codec works the same way.
//
// # Decode failures
//
// A body that does not decode, or whose content type the codec does not
// read, will not decode on the next attempt either. [Decode] (and so
// [Handler]) returns such a failure marked mq.Permanent and wrapping
// [ErrDecode] and the codec's error: retry middleware gives up at once,
// and the dead-letter middleware (package dlq) moves the message to the
// dead-letter topic with the decode error in its mq-dlq-error header,
// instead of the message coming back forever.
//
// # CloudEvents
//
// [Binding] reads and writes the context attributes of a CloudEvent
// ([Event]: id, source, specversion, type, and the optional subject,
// time, dataschema, datacontenttype and extensions) in binary content
// mode: each attribute is a header named by a prefix and its name
// ("ce-id", or "ce_id" with [PrefixKafka] as the CloudEvents Kafka
// binding has it), datacontenttype is the content-type header, and the
// event's data is the body, encoded by the codec. A Producer with an
// Event function writes them on every message; [Binding.Read] checks the
// required attributes and their constraints, so events go to and come
// from CloudEvents-speaking systems.
//
// # Outputs of a handler
//
// A Producer sends through any [Publisher], an mq.Producer or the outputs
// of a publishing handler (package runner): invoices.Via(out).Produce(ctx,
// inv) adds the encoded invoice to the handler's outputs, with an ID
// derived from the input's (see [IDAssigner]).
package typed

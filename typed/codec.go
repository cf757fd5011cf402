package typed

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/mqkit/mq"
)

// HeaderContentType is the header that names the media type of a
// message's body, as the CloudEvents Kafka and HTTP bindings name it.
const HeaderContentType = "content-type"

// Media types of the codecs of this package.
const (
	ContentTypeJSON  = "application/json"
	ContentTypeProto = "application/protobuf"
)

// Codec turns values of type T into message bodies and back.
// Implementations are safe for concurrent use.
type Codec[T any] interface {
	// ContentType is the media type of the bodies Marshal makes (RFC
	// 2046), written to HeaderContentType.
	ContentType() string
	// Marshal encodes v.
	Marshal(v T) ([]byte, error)
	// Unmarshal decodes a body into a new T.
	Unmarshal(data []byte) (T, error)
}

// Acceptor is implemented by a Codec that decodes bodies of more media
// types than its ContentType: Decode then asks it, rather than compare
// the message's content type with ContentType.
type Acceptor interface {
	// Accepts reports whether the codec decodes bodies of mediaType
	// (lower case, without parameters).
	Accepts(mediaType string) bool
}

// ErrDecode is wrapped by every error of Decode.
var ErrDecode = errors.New("typed: cannot decode message")

// Encode returns a message whose body is v encoded by c and whose
// HeaderContentType is c's content type.
func Encode[T any](c Codec[T], v T) (*mq.Message, error) {
	b, err := c.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("typed: encode %T as %s: %w", v, c.ContentType(), err)
	}
	return &mq.Message{Body: b, Headers: map[string]string{HeaderContentType: c.ContentType()}}, nil
}

// Decode decodes m's body with c. A message whose HeaderContentType names
// a media type c does not decode, or whose body c cannot decode, gives an
// error wrapping ErrDecode and the codec's error, marked mq.Permanent:
// retrying will not fix it, so middleware.Retry gives up at once and the
// dead-letter middleware routes it to the dead-letter topic with this
// error, rather than let it loop. A message without the header (from a
// producer that sets none) is decoded as c's type.
func Decode[T any](c Codec[T], m *mq.Message) (T, error) {
	if ct := header(m, HeaderContentType); ct != "" && !accepts(c, ct) {
		var zero T
		return zero, mq.Permanent(fmt.Errorf("%w: %s has content type %q; want %s (%T)", ErrDecode, m, ct, c.ContentType(), zero))
	}
	v, err := c.Unmarshal(m.Body)
	if err != nil {
		return v, mq.Permanent(fmt.Errorf("%w: %s as %s (%T): %w", ErrDecode, m, c.ContentType(), v, err))
	}
	return v, nil
}

// accepts reports whether c decodes bodies of content type ct.
func accepts[T any](c Codec[T], ct string) bool {
	mt, err := mediaType(ct)
	if err != nil {
		return false
	}
	if a, ok := c.(Acceptor); ok {
		return a.Accepts(mt)
	}
	own, err := mediaType(c.ContentType())
	return err == nil && own == mt
}

// mediaType returns the type/subtype of an RFC 2046 media type, in lower
// case and without parameters.
func mediaType(s string) (string, error) {
	mt, _, err := mime.ParseMediaType(s)
	if err != nil {
		return "", err
	}
	if typ, sub, ok := strings.Cut(mt, "/"); !ok || typ == "" || sub == "" {
		return "", fmt.Errorf("media type %q has no type/subtype", s)
	}
	return mt, nil
}

// header returns the value of m's header name, matching the name without
// regard to case when no header has it exactly (HTTP bridges capitalise).
func header(m *mq.Message, name string) string {
	if v, ok := m.Headers[name]; ok {
		return v
	}
	for k, v := range m.Headers {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// JSON returns a codec of T as JSON (encoding/json). It decodes bodies
// labelled application/json or any application/*+json type. Unknown
// fields are ignored, so a consumer keeps working when producers add
// fields; an empty or malformed body is a decode error.
func JSON[T any]() Codec[T] { return jsonCodec[T]{} }

type jsonCodec[T any] struct{}

func (jsonCodec[T]) ContentType() string { return ContentTypeJSON }

func (jsonCodec[T]) Marshal(v T) ([]byte, error) { return json.Marshal(v) }

func (jsonCodec[T]) Unmarshal(data []byte) (T, error) {
	var v T
	err := json.Unmarshal(data, &v)
	return v, err
}

func (jsonCodec[T]) Accepts(mt string) bool {
	return mt == ContentTypeJSON || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")
}

// Proto returns a codec of the Protocol Buffers message type T (a
// pointer to a generated message struct, such as *wrapperspb.StringValue)
// in the binary wire format, marshalled deterministically. It decodes
// bodies labelled application/protobuf or application/x-protobuf.
func Proto[T proto.Message]() Codec[T] { return protoCodec[T]{} }

type protoCodec[T proto.Message] struct{}

func (protoCodec[T]) ContentType() string { return ContentTypeProto }

func (protoCodec[T]) Marshal(v T) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(v)
}

func (protoCodec[T]) Unmarshal(data []byte) (T, error) {
	var zero T
	v := zero.ProtoReflect().Type().New().Interface().(T)
	if err := proto.Unmarshal(data, v); err != nil {
		return zero, err
	}
	return v, nil
}

func (protoCodec[T]) Accepts(mt string) bool {
	return mt == ContentTypeProto || mt == "application/x-protobuf"
}

package typed_test

import (
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/typed"
)

func fullEvent() typed.Event {
	return typed.Event{
		ID:          "A234-1234-1234",
		Source:      "https://github.com/cloudevents/spec/pull",
		SpecVersion: "1.0",
		Type:        "com.github.pull_request.opened",
		Subject:     "123",
		Time:        time.Date(2018, 4, 5, 17, 31, 0, 0, time.UTC),
		DataSchema:  "https://example.com/schemas/pr.json",
		Extensions:  map[string]string{"comexampleextension1": "value", "traceparent2": "00-abc"},
	}
}

// Write puts every attribute in a ce- header (datacontenttype in
// content-type) and Read gives the same event back.
func TestCloudEventRoundTrip(t *testing.T) {
	m, err := typed.Encode(typed.JSON[order](), order{ID: "1"})
	if err != nil {
		t.Fatal(err)
	}
	e := fullEvent()
	if err := (typed.Binding{}).Write(m, e); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"ce-specversion":          "1.0",
		"ce-id":                   "A234-1234-1234",
		"ce-source":               "https://github.com/cloudevents/spec/pull",
		"ce-type":                 "com.github.pull_request.opened",
		"ce-subject":              "123",
		"ce-time":                 "2018-04-05T17:31:00Z",
		"ce-dataschema":           "https://example.com/schemas/pr.json",
		"ce-comexampleextension1": "value",
		"ce-traceparent2":         "00-abc",
		"content-type":            "application/json",
	}
	if !maps.Equal(m.Headers, want) {
		t.Errorf("headers\n%v\nwant\n%v", m.Headers, want)
	}
	got, err := typed.Binding{}.Read(m)
	if err != nil {
		t.Fatal(err)
	}
	e.DataContentType = "application/json"
	if !got.Time.Equal(e.Time) || !maps.Equal(got.Extensions, e.Extensions) {
		t.Errorf("read %+v, want %+v", got, e)
	}
	got.Time, e.Time, got.Extensions, e.Extensions = time.Time{}, time.Time{}, nil, nil
	if !reflect.DeepEqual(got, e) {
		t.Errorf("read %+v, want %+v", got, e)
	}
	if !(typed.Binding{}).Is(m) || (typed.Binding{Prefix: typed.PrefixKafka}).Is(m) {
		t.Error("Is does not tell the binding's events apart")
	}
}

// Write fills the defaults: specversion 1.0, the message's ID, its
// content type; the Kafka prefix names the headers ce_*.
func TestCloudEventWriteDefaultsAndKafkaPrefix(t *testing.T) {
	m := &mq.Message{ID: "m-1", Headers: map[string]string{"content-type": "application/protobuf"}}
	b := typed.Binding{Prefix: typed.PrefixKafka}
	if err := b.Write(m, typed.Event{Source: "/orders", Type: "order.placed"}); err != nil {
		t.Fatal(err)
	}
	if m.Header("ce_id") != "m-1" || m.Header("ce_specversion") != "1.0" || m.Header("ce_source") != "/orders" || m.Header("ce_type") != "order.placed" {
		t.Errorf("headers %v", m.Headers)
	}
	for k := range m.Headers {
		if strings.HasPrefix(k, "ce-") {
			t.Errorf("header %q with the HTTP prefix", k)
		}
	}
	e, err := b.Read(m)
	if err != nil || e.DataContentType != "application/protobuf" || e.ID != "m-1" {
		t.Errorf("Read = %+v, %v", e, err)
	}
}

// An event another system wrote, with the header names an HTTP bridge
// capitalises, reads the same.
func TestCloudEventReadForeignHeaders(t *testing.T) {
	m := &mq.Message{Headers: map[string]string{
		"Ce-Specversion": "1.0", "Ce-Id": "x1", "Ce-Source": "urn:example:shop", "Ce-Type": "t",
		"Ce-Time": "2024-02-29T23:59:59.5+01:00", "Content-Type": "application/json",
	}}
	e, err := typed.Binding{}.Read(m)
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != "x1" || e.Source != "urn:example:shop" || e.DataContentType != "application/json" || e.Time.UnixMilli() != time.Date(2024, 2, 29, 22, 59, 59, 5e8, time.UTC).UnixMilli() {
		t.Errorf("read %+v", e)
	}
}

// The spec's required attributes (id, source, specversion, type) and
// the constraints on the others: each violation fails Read, permanently,
// naming it; Write writes nothing for an invalid event.
func TestCloudEventConstraints(t *testing.T) {
	valid := func() map[string]string {
		return map[string]string{"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
	}
	if _, err := (typed.Binding{}).Read(&mq.Message{Headers: valid()}); err != nil {
		t.Fatalf("minimal event: %v", err)
	}
	for name, tc := range map[string]struct {
		edit func(h map[string]string)
		want string
	}{
		"no id":                     {func(h map[string]string) { delete(h, "ce-id") }, "id is required"},
		"empty id":                  {func(h map[string]string) { h["ce-id"] = "" }, "id is required"},
		"no source":                 {func(h map[string]string) { delete(h, "ce-source") }, "source is required"},
		"source not a URI-ref":      {func(h map[string]string) { h["ce-source"] = "http://[::1" }, "not a URI-reference"},
		"no specversion":            {func(h map[string]string) { delete(h, "ce-specversion") }, "specversion is required"},
		"other specversion":         {func(h map[string]string) { h["ce-specversion"] = "0.3" }, `specversion "0.3" is not supported`},
		"no type":                   {func(h map[string]string) { delete(h, "ce-type") }, "type is required"},
		"empty subject":             {func(h map[string]string) { h["ce-subject"] = "" }, "subject is present but empty"},
		"time not RFC 3339":         {func(h map[string]string) { h["ce-time"] = "yesterday" }, "not an RFC 3339 timestamp"},
		"relative dataschema":       {func(h map[string]string) { h["ce-dataschema"] = "/schemas/x" }, "not an absolute URI"},
		"bad datacontenttype":       {func(h map[string]string) { h["content-type"] = "json" }, "not a media type"},
		"extension name not a-z0-9": {func(h map[string]string) { h["ce-my_ext"] = "v" }, `extension name "my_ext"`},
	} {
		h := valid()
		tc.edit(h)
		_, err := typed.Binding{}.Read(&mq.Message{ID: "m", Headers: h})
		if !errors.Is(err, typed.ErrInvalidEvent) || !mq.IsPermanent(err) {
			t.Errorf("%s: %v, want a permanent error wrapping ErrInvalidEvent", name, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %q does not say %q", name, err, tc.want)
		}
	}

	// Validate names every violation at once.
	err := typed.Event{SpecVersion: "1.0", Extensions: map[string]string{"Bad": "", "source": ""}}.Validate()
	for _, want := range []string{"id is required", "source is required", "type is required", `"Bad"`, `"source" is a core attribute`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to say %q", err, want)
		}
	}
	m := &mq.Message{}
	if err := (typed.Binding{}).Write(m, typed.Event{Source: "/s", Type: "t"}); !errors.Is(err, typed.ErrInvalidEvent) {
		t.Errorf("Write of an event with no ID anywhere = %v", err)
	}
	if len(m.Headers) != 0 {
		t.Errorf("Write of an invalid event wrote %v", m.Headers)
	}
}

package typed_test

import (
	"context"
	"fmt"
	"log"
	"maps"
	"slices"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/memory" // registers mem://
	"github.com/mqkit/mq/typed"
)

// Order is the payload of the example's orders topic.
type Order struct {
	ID    string `json:"id"`
	Cents int    `json:"cents"`
}

// A typed producer sends Orders as JSON CloudEvents; a typed handler
// receives them decoded.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := mq.Open(ctx, "mem://?group=billing")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	orders := &typed.Producer[Order]{
		Publisher: c.Producer(), Topic: "orders", Codec: typed.JSON[Order](),
		ID:    func(o Order) string { return o.ID },
		Event: func(Order) typed.Event { return typed.Event{Source: "/shop", Type: "com.example.order.placed"} },
	}
	if err := orders.Produce(ctx, Order{ID: "order-1", Cents: 1250}); err != nil {
		log.Fatal(err)
	}

	cons, err := c.Consumer(ctx, "orders")
	if err != nil {
		log.Fatal(err)
	}
	defer cons.Close()
	cons.Consume(ctx, typed.Handler(typed.JSON[Order](), func(ctx context.Context, o Order, m *mq.Message) error {
		e, err := typed.Binding{}.Read(m)
		if err != nil {
			return err // permanent: not a valid CloudEvent
		}
		fmt.Printf("%+v as %s, event %s of type %s from %s\n", o, m.Header(typed.HeaderContentType), e.ID, e.Type, e.Source)
		cancel()
		return nil
	}))
	// Output:
	// {ID:order-1 Cents:1250} as application/json, event order-1 of type com.example.order.placed from /shop
}

// Proto encodes generated Protocol Buffers messages.
func ExampleProto() {
	codec := typed.Proto[*wrapperspb.StringValue]()
	m, err := typed.Encode(codec, wrapperspb.String("hello"))
	if err != nil {
		log.Fatal(err)
	}
	v, err := typed.Decode(codec, m)
	fmt.Println(v.GetValue(), m.Header(typed.HeaderContentType), err)

	_, err = typed.Decode(codec, &mq.Message{ID: "m-2", Body: []byte{0xff}})
	fmt.Println("permanent:", mq.IsPermanent(err))
	// Output:
	// hello application/protobuf <nil>
	// permanent: true
}

// A Binding writes the CloudEvents attributes in binary content mode.
func ExampleBinding_Write() {
	m, _ := typed.Encode(typed.JSON[Order](), Order{ID: "o-1"})
	m.ID = "o-1"
	err := typed.Binding{Prefix: typed.PrefixKafka}.Write(m, typed.Event{Source: "/shop", Type: "com.example.order.placed", Subject: "o-1"})
	fmt.Println(err)
	for _, k := range slices.Sorted(maps.Keys(m.Headers)) {
		fmt.Printf("%s: %s\n", k, m.Headers[k])
	}
	// Output:
	// <nil>
	// ce_id: o-1
	// ce_source: /shop
	// ce_specversion: 1.0
	// ce_subject: o-1
	// ce_type: com.example.order.placed
	// content-type: application/json
}

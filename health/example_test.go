package health_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/health"
	_ "github.com/mqkit/mq/memory"
)

func Example() {
	c, err := mq.Open(context.Background(), "mem://")
	if err != nil {
		panic(err)
	}
	defer c.Close()
	h := health.New(health.Config{}, health.Client("broker", c))
	mux := http.NewServeMux()
	mux.Handle("/livez", h.Live())
	mux.Handle("/readyz", h.Ready())

	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	fmt.Println(rec.Code)
	// Output: 200
}

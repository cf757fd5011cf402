package testbed

import (
	"database/sql"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// PostgresDB returns a database/sql handle (driver "pgx") on the test
// binary's shared PostgreSQL, closed when the test ends, and the broker
// it runs on. With -short it skips the test; without Docker it skips, or
// fails under CI=true, as every starter does.
func PostgresDB(t testing.TB) (*sql.DB, *Broker) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a PostgreSQL container")
	}
	pg := SharedPostgres(t)
	db, err := sql.Open("pgx", pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db, pg
}

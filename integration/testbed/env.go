package testbed

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	tclog "github.com/testcontainers/testcontainers-go/log"
)

// Environment variables read by the harness.
const (
	// EnvRedisImage names the Redis image (default DefaultRedisImage).
	EnvRedisImage = "MQ_TEST_REDIS_IMAGE"
	// EnvRabbitMQImage names the RabbitMQ image (default DefaultRabbitMQImage).
	EnvRabbitMQImage = "MQ_TEST_RABBITMQ_IMAGE"
	// EnvKafkaImage names the Kafka image (default DefaultKafkaImage).
	EnvKafkaImage = "MQ_TEST_KAFKA_IMAGE"
	// EnvPostgresImage names the PostgreSQL image (default
	// DefaultPostgresImage).
	EnvPostgresImage = "MQ_TEST_POSTGRES_IMAGE"
	// EnvPull, when true, lets the harness pull a missing image.
	EnvPull = "MQ_TEST_PULL"
	// EnvVerbose, when true, shows testcontainers' log lines.
	EnvVerbose = "MQ_TEST_VERBOSE"
	// EnvCI, when true, turns a missing Docker or image into a test failure.
	EnvCI = "CI"
)

// Default images, for machines whose Docker can pull from Docker Hub.
const (
	DefaultRedisImage    = "redis:7"
	DefaultRabbitMQImage = "rabbitmq:3.13-management"
	// DefaultKafkaImage is the same Kafka version as the local image built
	// by scripts/testbed.sh (see scripts/images/kafka/pom.xml).
	DefaultKafkaImage = "apache/kafka:3.9.2"
	// DefaultPostgresImage is the same major version as the local image
	// built by scripts/testbed.sh (Debian bookworm's postgresql).
	DefaultPostgresImage = "postgres:15"
)

// EnvFileName is the file scripts/testbed.sh writes at the repository root.
const EnvFileName = ".testbed.env"

func init() {
	loadEnvFile()
	setDefault("TESTCONTAINERS_RYUK_DISABLED", "true")
	setDefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	if !envTrue(EnvVerbose) {
		tclog.SetDefault(tclog.NewNoopLogger())
	}
}

func setDefault(key, value string) {
	if _, ok := os.LookupEnv(key); !ok {
		_ = os.Setenv(key, value)
	}
}

func envTrue(key string) bool {
	v, err := strconv.ParseBool(strings.TrimSpace(os.Getenv(key)))
	return err == nil && v
}

// inCI reports whether a missing broker must fail rather than skip.
func inCI() bool { return envTrue(EnvCI) }

// loadEnvFile sets the variables of the nearest .testbed.env (looking from
// the working directory up to the module root) that are not set already.
func loadEnvFile() {
	dir, err := os.Getwd()
	if err != nil {
		return
	}
	for {
		if f, err := os.Open(filepath.Join(dir, EnvFileName)); err == nil {
			parseEnvFile(f)
			_ = f.Close()
			return
		}
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return // the module root has no env file
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return
		}
		dir = parent
	}
}

func parseEnvFile(f *os.File) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		value = strings.Trim(strings.TrimSpace(value), `"'`)
		setDefault(key, value)
	}
}

func imageFromEnv(key, def string) string {
	if v := strings.TrimSpace(os.Getenv(key)); v != "" {
		return v
	}
	return def
}

package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
)

// Labels put on every container the harness starts.
const (
	labelTestbed = "org.mqkit.testbed"
	labelKind    = "org.mqkit.testbed.kind"
	labelPID     = "org.mqkit.testbed.pid"
)

// unavailableError means the broker cannot be had on this machine (no
// Docker, no image): skipped outside CI, fatal in CI.
type unavailableError struct{ msg string }

func (e *unavailableError) Error() string { return e.msg }

func unavailable(format string, args ...any) error {
	return &unavailableError{msg: fmt.Sprintf(format, args...)}
}

var (
	dockerOnce sync.Once
	dockerCli  *testcontainers.DockerClient
	dockerErr  error
)

// docker returns the process's Docker client, checking once that the daemon
// answers and removing containers left behind by dead test processes.
func docker(ctx context.Context) (*testcontainers.DockerClient, error) {
	dockerOnce.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		cli, err := testcontainers.NewDockerClientWithOpts(ctx)
		if err != nil {
			dockerErr = unavailable("Docker is not reachable (%v)", err)
			return
		}
		if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
			_ = cli.Close()
			dockerErr = unavailable("Docker is not reachable (%v)", err)
			return
		}
		dockerCli = cli
		reapOrphans(ctx, cli)
	})
	return dockerCli, dockerErr
}

// reapOrphans removes the harness's containers whose test process is gone
// (a test binary killed by a timeout never runs its cleanups; there is no
// Ryuk reaper here).
func reapOrphans(ctx context.Context, cli *testcontainers.DockerClient) {
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", labelTestbed),
	})
	if err != nil {
		return
	}
	for _, c := range res.Items {
		pid, err := strconv.Atoi(c.Labels[labelPID])
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		_, _ = cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	}
}

func processAlive(pid int) bool {
	if pid == os.Getpid() {
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ensureImage checks that image is present locally. A missing image is
// pulled (by testcontainers, on create) only when MQ_TEST_PULL=true.
func ensureImage(ctx context.Context, cli *testcontainers.DockerClient, image, envKey string) error {
	_, err := cli.ImageInspect(ctx, image)
	if err == nil {
		return nil
	}
	if envTrue(EnvPull) {
		return nil
	}
	return unavailable("image %s is not present in the local Docker (%v).\n"+
		"Run scripts/testbed.sh to build the local test images (it writes %s, which the harness reads),\n"+
		"or `docker pull %s`, or set %s to an image you have, or %s=true to let the harness pull it",
		image, err, EnvFileName, image, envKey, EnvPull)
}

var (
	portMu    sync.Mutex
	portsUsed = map[int]bool{}
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that this process has not handed out before.
func freePort() (int, error) {
	portMu.Lock()
	defer portMu.Unlock()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !portsUsed[port] {
			portsUsed[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free port on 127.0.0.1")
}

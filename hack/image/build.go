package main

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The operator's image as the Dockerfile defines it (its `go build` line, the path the binary
// is copied to, USER, ENTRYPOINT, CMD, WORKDIR). image_test.go parses the Dockerfile and fails
// when the two differ.
var operator = Spec{
	BuildEnv:   []string{"CGO_ENABLED=0"},
	BuildFlags: []string{"-trimpath", "-ldflags", "-s -w"},
	Binary:     "/webhook-operator",
	User:       "65532:65532",
	Entrypoint: []string{"/webhook-operator"},
	Cmd:        []string{"manager"},
	WorkingDir: "/",
}

// The pause image of the test cluster runs as the user of Kubernetes' own pause image.
var pause = Spec{
	BuildEnv:   []string{"CGO_ENABLED=0"},
	BuildFlags: []string{"-trimpath", "-ldflags", "-s -w"},
	Binary:     "/pause",
	User:       "65535:65535",
	Entrypoint: []string{"/pause"},
	WorkingDir: "/",
}

const (
	// OperatorTag is the name config/manager/kustomization.yaml gives the image.
	OperatorTag = "docrouter/webhook-operator:v0.1.0"
	// PauseTag is the sandbox image of the test cluster (containerd's sandbox_image).
	PauseTag = "docrouter/pause:v1"
	// CABundlePath is where Debian, distroless and Go's crypto/x509 look for the CA bundle.
	CABundlePath = "/etc/ssl/certs/ca-certificates.crt"
)

// Spec is how an image's binary is built and run.
type Spec struct {
	BuildEnv   []string
	BuildFlags []string
	Binary     string
	User       string
	Entrypoint []string
	Cmd        []string
	WorkingDir string
}

// BuildOperator builds the operator's binary from source with the Dockerfile's flags and
// returns its image: the base layer (CA bundle, users, /tmp) and the binary's layer.
func BuildOperator(source, tmp, caBundle, arch string, created time.Time) (v1.Image, error) {
	ca, err := os.ReadFile(caBundle)
	if err != nil {
		return nil, fmt.Errorf("reading the CA bundle: %w (on Debian it comes with the ca-certificates package)", err)
	}
	if n := countCerts(ca); n == 0 {
		return nil, fmt.Errorf("the CA bundle %s holds no PEM certificate", caBundle)
	}
	bin := filepath.Join(tmp, "webhook-operator")
	if err := goBuild(source, ".", bin, arch, operator); err != nil {
		return nil, err
	}
	return operatorImage(bin, ca, arch, created)
}

// operatorImage assembles the operator's image around a built binary.
func operatorImage(bin string, ca []byte, arch string, created time.Time) (v1.Image, error) {
	base, err := layer(created, baseFiles(ca))
	if err != nil {
		return nil, err
	}
	app, err := binaryLayer(created, bin, operator.Binary)
	if err != nil {
		return nil, err
	}
	return image(operator, arch, created, []v1.Layer{base, app}, []string{
		"base: CA bundle " + CABundlePath + ", /etc/passwd and /etc/group (nonroot 65532), /etc/nsswitch.conf, /tmp, /home/nonroot",
		"binary: " + operator.Binary + " (CGO_ENABLED=0 go build " + strings.Join(quoteFlags(operator.BuildFlags), " ") + ")",
	}, map[string]string{
		"org.opencontainers.image.title":       "webhook-operator",
		"org.opencontainers.image.description": "DocRouter webhook operator",
		"org.opencontainers.image.version":     OperatorTag[strings.LastIndex(OperatorTag, ":")+1:],
	})
}

// BuildPause builds ./pause (of the module in dir) and returns the pause image.
func BuildPause(dir, tmp, arch string, created time.Time) (v1.Image, error) {
	bin := filepath.Join(tmp, "pause")
	if err := goBuild(dir, "./pause", bin, arch, pause); err != nil {
		return nil, err
	}
	app, err := binaryLayer(created, bin, pause.Binary)
	if err != nil {
		return nil, err
	}
	return image(pause, arch, created, []v1.Layer{app}, []string{"binary: " + pause.Binary}, nil)
}

func goBuild(dir, pkg, out, arch string, s Spec) error {
	args := append(append([]string{"build"}, s.BuildFlags...), "-o", out, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "GOOS=linux", "GOARCH="+arch), s.BuildEnv...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s in %s: %w", strings.Join(quoteFlags(args), " "), dir, err)
	}
	return nil
}

func quoteFlags(flags []string) []string {
	out := make([]string, len(flags))
	for i, f := range flags {
		if strings.Contains(f, " ") {
			f = `"` + f + `"`
		}
		out[i] = f
	}
	return out
}

func image(s Spec, arch string, created time.Time, layers []v1.Layer, history []string, labels map[string]string) (v1.Image, error) {
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{Layer: l, History: v1.History{Created: v1.Time{Time: created}, CreatedBy: history[i], Comment: "built by hack/image"}}
	}
	img, err := mutate.Append(empty.Image, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = arch, "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config = v1.Config{
		User:       s.User,
		Entrypoint: s.Entrypoint,
		Cmd:        s.Cmd,
		WorkingDir: s.WorkingDir,
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=" + CABundlePath,
		},
		Labels: labels,
	}
	return mutate.ConfigFile(img, cf)
}

// entry is one file or directory of a layer.
type entry struct {
	path     string
	mode     int64
	uid, gid int
	data     []byte // nil for a directory
}

// baseFiles is what the binary needs around it, as gcr.io/distroless/static:nonroot has it.
func baseFiles(ca []byte) []entry {
	dir := func(p string, mode int64, id int) entry { return entry{path: p, mode: mode, uid: id, gid: id} }
	file := func(p, s string) entry { return entry{path: p, mode: 0o644, data: []byte(s)} }
	return []entry{
		dir("etc/", 0o755, 0),
		file("etc/group", "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"),
		file("etc/nsswitch.conf", "hosts: files dns\n"),
		file("etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"+
			"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"),
		dir("etc/ssl/", 0o755, 0),
		dir("etc/ssl/certs/", 0o755, 0),
		{path: strings.TrimPrefix(CABundlePath, "/"), mode: 0o644, data: ca},
		dir("home/", 0o755, 0),
		dir("home/nonroot/", 0o700, 65532),
		dir("root/", 0o700, 0),
		{path: "tmp/", mode: 0o1777},
	}
}

func binaryLayer(created time.Time, bin, at string) (v1.Layer, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	return layer(created, []entry{{path: strings.TrimPrefix(at, "/"), mode: 0o755, data: data}})
}

// layer writes the entries, in order, as an uncompressed tar and wraps it as a gzip layer.
func layer(created time.Time, entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name: e.path, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: created,
			Format: tar.FormatPAX, Typeflag: tar.TypeReg, Size: int64(len(e.data)),
		}
		if e.data == nil {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

func countCerts(pemBytes []byte) int {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return 0
	}
	return len(pool.Subjects()) //nolint:staticcheck // the count of a file's certificates, not system roots
}

// Command image builds the operator's container image without a container engine and writes
// it as a tarball that `docker load`, `ctr images import` and `crane push` take: the static
// binary, built with the Dockerfile's flags, as one layer on an empty base, over a base layer
// that holds what it needs at run time (what gcr.io/distroless/static:nonroot gives the
// Dockerfile's image): a CA bundle for TLS to receivers, /etc/passwd and /etc/group with the
// non-root user 65532, /etc/nsswitch.conf, a writable /tmp and the user's home. The image's
// user, entrypoint and command are the Dockerfile's; image_test.go checks that they agree.
//
// With -pause it builds the test cluster's sandbox image instead (./pause, user 65535).
//
//	go build -C hack/image -o ../../bin/image . && bin/image -source . -o bin/webhook-operator-image.tar
//
// The layers are reproducible: every file is dated -created (1970-01-01 by default, or
// $SOURCE_DATE_EPOCH), so the same sources, Go toolchain and CA bundle give the same digest.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		source, out, tag, caBundle, arch string
		pause                            bool
	)
	flag.StringVar(&source, "source", ".", "The operator's checkout (the directory holding go.mod and the Dockerfile).")
	flag.StringVar(&out, "o", "bin/webhook-operator-image.tar", "The tarball to write.")
	flag.StringVar(&tag, "tag", "", "The image's name in the tarball; default docrouter/webhook-operator:v0.1.0, or docrouter/pause:v1 with -pause.")
	flag.StringVar(&caBundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "The CA bundle to put in the image (Debian's ca-certificates, as in distroless).")
	flag.StringVar(&arch, "arch", runtime.GOARCH, "The image's architecture (GOARCH of the binary).")
	flag.BoolVar(&pause, "pause", false, "Build the test cluster's pause image instead of the operator's.")
	flag.Parse()

	created := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q is not a number of seconds", s)
		}
		created = time.Unix(sec, 0).UTC()
	}
	source, err := filepath.Abs(source)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "webhook-operator-image-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(tmp) }()

	var img v1.Image
	if pause {
		if tag == "" {
			tag = PauseTag
		}
		img, err = BuildPause(filepath.Join(source, "hack", "image"), tmp, arch, created)
	} else {
		if tag == "" {
			tag = OperatorTag
		}
		img, err = BuildOperator(source, tmp, caBundle, arch, created)
	}
	if err != nil {
		return err
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("-tag %q is not an image name such as docrouter/webhook-operator:v0.1.0: %w", tag, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	// Written next to the target and renamed, so that a failed build leaves no half tarball.
	part := out + ".part"
	if err := tarball.WriteToFile(part, ref, img); err != nil {
		_ = os.Remove(part)
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(part, out); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("image: wrote %s (%s, %s)\n", out, ref, digest)
	return nil
}

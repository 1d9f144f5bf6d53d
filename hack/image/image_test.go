package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// dockerfile is what the final stage of the Dockerfile says about the image.
type dockerfile struct {
	buildEnv, buildFlags []string
	binary               string // the COPY --from=build destination
	user, workdir        string
	entrypoint, cmd      []string
}

// parseDockerfile reads the instructions this image tool must agree with: the `go build` line
// of the build stage and COPY, USER, WORKDIR, ENTRYPOINT and CMD of the last stage.
func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var d dockerfile
	jsonArray := func(s string) []string {
		var out []string
		if err := json.Unmarshal([]byte(s), &out); err != nil {
			t.Fatalf("the Dockerfile's %q is not the JSON (exec) form: %v", s, err)
		}
		return out
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		instr, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(instr) {
		case "FROM": // a new stage: only the last one's settings count
			d.user, d.workdir, d.entrypoint, d.cmd, d.binary = "", "", nil, nil, ""
		case "RUN":
			before, after, ok := strings.Cut(rest, " go build ")
			if !ok {
				continue
			}
			for _, kv := range strings.Fields(before) {
				if !strings.Contains(kv, "${") { // GOOS and GOARCH come from the target platform
					d.buildEnv = append(d.buildEnv, kv)
				}
			}
			after, _, _ = strings.Cut(after, " -o ")
			d.buildFlags = splitQuoted(after)
		case "COPY":
			if fields := strings.Fields(rest); len(fields) == 3 && fields[0] == "--from=build" {
				d.binary = fields[2]
			}
		case "USER":
			d.user = rest
		case "WORKDIR":
			d.workdir = rest
		case "ENTRYPOINT":
			d.entrypoint = jsonArray(rest)
		case "CMD":
			d.cmd = jsonArray(rest)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if d.buildFlags == nil || d.binary == "" || d.user == "" || d.entrypoint == nil {
		t.Fatalf("could not read the go build line, COPY --from=build, USER and ENTRYPOINT from %s: %+v", path, d)
	}
	return d
}

// splitQuoted splits on spaces outside double quotes, as the shell does for the go build line.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range s + " " {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	return out
}

// The image this tool builds is the Dockerfile's image: the binary built with the same
// environment and flags, copied to the same path, run as the same user with the same
// entrypoint, command and working directory.
func TestOperatorSpecIsTheDockerfiles(t *testing.T) {
	d := parseDockerfile(t, filepath.Join("..", "..", "Dockerfile"))
	check := func(what string, got, want any) {
		t.Helper()
		if !equal(got, want) {
			t.Errorf("%s: hack/image has %q, the Dockerfile %q", what, got, want)
		}
	}
	check("go build environment", operator.BuildEnv, d.buildEnv)
	check("go build flags", operator.BuildFlags, d.buildFlags)
	check("binary path", operator.Binary, d.binary)
	check("USER", operator.User, d.user)
	check("ENTRYPOINT", operator.Entrypoint, d.entrypoint)
	check("CMD", operator.Cmd, d.cmd)
	check("WORKDIR", operator.WorkingDir, d.workdir)
}

func equal(a, b any) bool {
	switch a := a.(type) {
	case []string:
		return slices.Equal(a, b.([]string))
	default:
		return a == b
	}
}

// writeAndRead writes img as `make image` does and reads it back from the tarball, as
// `ctr images import` and `docker load` would.
func writeAndRead(t *testing.T, img v1.Image, tag string) v1.Image {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.tar")
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, ref, img); err != nil {
		t.Fatal(err)
	}
	back, err := tarball.ImageFromPath(path, &ref)
	if err != nil {
		t.Fatalf("reading the tarball back as %s: %v", tag, err)
	}
	return back
}

// files returns the image's flattened file system: path -> header and content.
func files(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := "/" + strings.TrimSuffix(h.Name, "/")
		hdrs[p] = h
		if data[p], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	return hdrs, data
}

func assertStatic(t *testing.T, what string, bin []byte) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s is not an ELF executable: %v", what, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a dynamic loader (PT_INTERP): it cannot run on an empty base", what)
		}
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s keeps its symbol table: -ldflags \"-s -w\" was not applied", what)
	}
}

// The operator's image, as a container runtime reads it from the tarball: it runs the static
// binary as the non-root user of its /etc/passwd, trusts the CAs of its bundle (HTTPS to
// receivers works), and has a writable /tmp.
func TestOperatorImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the operator")
	}
	created := time.Unix(0, 0).UTC()
	img, err := BuildOperator(filepath.Join("..", ".."), t.TempDir(), "/etc/ssl/certs/ca-certificates.crt", runtime.GOARCH, created)
	if err != nil {
		t.Fatal(err)
	}
	img = writeAndRead(t, img, OperatorTag)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" || !slices.Equal(c.Entrypoint, []string{"/webhook-operator"}) || !slices.Equal(c.Cmd, []string{"manager"}) {
		t.Errorf("config: user %q entrypoint %q cmd %q; want 65532:65532 [/webhook-operator] [manager]", c.User, c.Entrypoint, c.Cmd)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if !slices.Contains(c.Env, "SSL_CERT_FILE="+CABundlePath) {
		t.Errorf("env %q lacks SSL_CERT_FILE", c.Env)
	}

	hdrs, data := files(t, img)
	bin, ok := hdrs["/webhook-operator"]
	if !ok {
		t.Fatal("the image has no /webhook-operator")
	}
	if bin.Mode&0o111 == 0 || bin.Uid != 0 {
		t.Errorf("/webhook-operator: mode %o uid %d; want an executable owned by root (the user cannot replace it)", bin.Mode, bin.Uid)
	}
	assertStatic(t, "/webhook-operator", data["/webhook-operator"])

	if n := countCerts(data[CABundlePath]); n < 50 {
		t.Errorf("%s holds %d certificates; want the public CAs (more than 50)", CABundlePath, n)
	}
	uid, gid, _ := strings.Cut(c.User, ":")
	if !hasLine(data["/etc/passwd"], func(f []string) bool { return len(f) == 7 && f[2] == uid && f[3] == gid && f[0] == "nonroot" }) {
		t.Errorf("/etc/passwd has no nonroot user %s:%s:\n%s", uid, gid, data["/etc/passwd"])
	}
	if !hasLine(data["/etc/group"], func(f []string) bool { return len(f) == 4 && f[2] == gid }) {
		t.Errorf("/etc/group has no group %s:\n%s", gid, data["/etc/group"])
	}
	if h := hdrs["/tmp"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode&0o1777 != 0o1777 {
		t.Errorf("/tmp must be a directory with mode 1777: %+v", h)
	}
	if h := hdrs["/home/nonroot"]; h == nil || strconv.Itoa(h.Uid)+":"+strconv.Itoa(h.Gid) != c.User {
		t.Errorf("/home/nonroot must belong to %s: %+v", c.User, h)
	}
	for p, h := range hdrs {
		if !h.ModTime.Equal(created) {
			t.Errorf("%s is dated %s, not %s: the layers would not be reproducible", p, h.ModTime, created)
		}
	}

	// Reproducible: the same binary and CA bundle give the same digest (the binary itself is
	// reproducible with -trimpath, as Go builds are).
	binPath := filepath.Join(t.TempDir(), "webhook-operator")
	if err := os.WriteFile(binPath, data["/webhook-operator"], 0o755); err != nil {
		t.Fatal(err)
	}
	again, err := operatorImage(binPath, data[CABundlePath], runtime.GOARCH, created)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("two builds of the same sources differ: %s and %s", d1, d2)
	}
}

// The pause image is one static binary that runs as 65535, as Kubernetes' own pause image.
func TestPauseImage(t *testing.T) {
	img, err := BuildPause(".", t.TempDir(), runtime.GOARCH, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	img = writeAndRead(t, img, PauseTag)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65535:65535" || !slices.Equal(cf.Config.Entrypoint, []string{"/pause"}) {
		t.Errorf("pause config: user %q entrypoint %q", cf.Config.User, cf.Config.Entrypoint)
	}
	_, data := files(t, img)
	assertStatic(t, "/pause", data["/pause"])
}

func hasLine(b []byte, match func([]string) bool) bool {
	for _, l := range strings.Split(string(b), "\n") {
		if match(strings.Split(l, ":")) {
			return true
		}
	}
	return false
}

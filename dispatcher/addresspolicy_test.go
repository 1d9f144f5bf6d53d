package dispatcher

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func mustCIDRs(t *testing.T, s string) []netip.Prefix {
	t.Helper()
	p, err := ParseCIDRs(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAddressPolicyDefaults is the default policy as a pure function over addresses: what an
// operator who sets no flag gets.
func TestAddressPolicyDefaults(t *testing.T) {
	var p AddressPolicy
	for _, tc := range []struct {
		ip      string
		blocked bool
		reason  string // a word the user reads in the status
	}{
		// Public and private unicast: allowed.
		{"93.184.215.14", false, ""},
		{"8.8.8.8", false, ""},
		{"10.96.0.10", false, ""},
		{"172.16.5.4", false, ""},
		{"192.168.1.20", false, ""},
		{"2606:4700::6810:84e5", false, ""},
		{"fd12:3456::1", false, ""},     // unique local, like RFC 1918
		{"64:ff9b::808:808", false, ""}, // NAT64 of 8.8.8.8, as IPv6-only clusters use
		{"2002:808:808::1", false, ""},  // 6to4 of 8.8.8.8
		// The operator's own host and the cloud's metadata services.
		{"127.0.0.1", true, "loopback"},
		{"127.1.2.3", true, "loopback"},
		{"::1", true, "loopback"},
		{"169.254.169.254", true, "link-local"},
		{"169.254.0.1", true, "link-local"},
		{"fe80::1", true, "link-local"},
		{"fe80::1%eth0", true, "link-local"},
		{"fd00:ec2::254", true, "metadata"},
		{"100.100.100.200", true, "CGNAT"},
		{"100.64.0.1", true, "CGNAT"},
		{"100.127.255.254", true, "CGNAT"},
		{"192.0.0.192", true, "IETF"},
		// Not destinations.
		{"0.0.0.0", true, "unspecified"},
		{"::", true, "unspecified"},
		{"224.0.0.1", true, "multicast"},
		{"ff02::1", true, "multicast"},
		{"255.255.255.255", true, "broadcast"},
		{"240.0.0.1", true, "reserved"},
		{"198.18.0.1", true, "benchmarking"},
		{"198.19.255.255", true, "benchmarking"},
		{"2001:db8::1", true, "documentation"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", true, "Teredo"},
		// IPv4 hidden in IPv6 is judged on its IPv4 address.
		{"::ffff:127.0.0.1", true, "loopback"},
		{"::ffff:169.254.169.254", true, "link-local"},
		{"::ffff:10.0.0.1", false, ""},
		{"64:ff9b::7f00:1", true, "embedding 127.0.0.1"},
		{"64:ff9b::a9fe:a9fe", true, "embedding 169.254.169.254"},
		{"2002:7f00:1::1", true, "embedding 127.0.0.1"},
		{"2002:a9fe:a9fe::", true, "embedding 169.254.169.254"},
		{"::127.0.0.1", true, "IPv4-compatible"},
		{"64:ff9b:1::a00:1", true, "NAT64"},
	} {
		err := p.Check(netip.MustParseAddr(tc.ip))
		if (err != nil) != tc.blocked {
			t.Errorf("%s: blocked = %v, want %v (%v)", tc.ip, err != nil, tc.blocked, err)
			continue
		}
		if !tc.blocked {
			continue
		}
		var b *BlockedError
		if !errors.As(err, &b) {
			t.Errorf("%s: error %T is not a *BlockedError", tc.ip, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.reason) || !strings.Contains(msg, "outbound address policy") || !strings.Contains(msg, FlagOutboundAllowCIDRs) {
			t.Errorf("%s: message %q should say %q, name the policy and the flag %s", tc.ip, msg, tc.reason, FlagOutboundAllowCIDRs)
		}
	}
}

// TestAddressPolicyFlags: --outbound-allow-cidrs opens a default-denied range (the dev stack's
// loopback), --outbound-deny-cidrs closes an allowed one, and deny wins over allow.
func TestAddressPolicyFlags(t *testing.T) {
	p := AddressPolicy{
		Allow: mustCIDRs(t, "127.0.0.0/8, ::1, 10.1.2.3/32"),
		Deny:  mustCIDRs(t, "10.0.0.0/8,203.0.113.7"),
	}
	for _, tc := range []struct {
		ip      string
		blocked bool
		flag    string
	}{
		{"127.0.0.1", false, ""},
		{"::1", false, ""},
		{"::ffff:127.0.0.1", false, ""},
		{"64:ff9b::7f00:1", false, ""}, // NAT64 of an allowed address
		{"169.254.169.254", true, FlagOutboundAllowCIDRs},
		{"10.0.0.1", true, FlagOutboundDenyCIDRs},
		{"10.1.2.3", true, FlagOutboundDenyCIDRs}, // in both: deny wins
		{"::ffff:10.9.9.9", true, FlagOutboundDenyCIDRs},
		{"64:ff9b::a00:1", true, FlagOutboundDenyCIDRs},
		{"192.168.0.1", false, ""},
	} {
		err := p.Check(netip.MustParseAddr(tc.ip))
		if (err != nil) != tc.blocked {
			t.Errorf("%s: blocked = %v, want %v (%v)", tc.ip, err != nil, tc.blocked, err)
			continue
		}
		if tc.blocked && !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%s: %q should name %s", tc.ip, err, tc.flag)
		}
	}
}

func TestParseCIDRs(t *testing.T) {
	got, err := ParseCIDRs(" 127.0.0.0/8,,::1 , ::ffff:10.0.0.0/104, 10.1.2.3/8")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "10.0.0.0/8"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("entry %d = %s, want %s", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "localhost", "10.0.0.0/", "1.2.3"} {
		if _, err := ParseCIDRs(bad); err == nil {
			t.Errorf("ParseCIDRs(%q) accepted a bad entry", bad)
		}
	}
}

// stubResolver answers from a map and counts lookups.
type stubResolver struct {
	answers map[string][]string
	lookups int
}

func (r *stubResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.lookups++
	var out []netip.Addr
	for _, a := range r.answers[host] {
		out = append(out, netip.MustParseAddr(a))
	}
	if out == nil {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}

// recordingDial records what would be dialled and never opens a connection.
type recordingDial struct{ addrs []string }

func (d *recordingDial) dial(_ context.Context, _, address string) (net.Conn, error) {
	d.addrs = append(d.addrs, address)
	return nil, errors.New("test dialer: not connecting")
}

// TestPolicyDialerChecksEveryResolvedAddress: a host name that resolves to a public and a
// metadata address (the DNS rebinding shape) is refused without any connection attempt, and an
// allowed name is dialled by the IP that was checked, not by name (no second lookup).
func TestPolicyDialerChecksEveryResolvedAddress(t *testing.T) {
	res := &stubResolver{answers: map[string][]string{
		"rebind.example":   {"93.184.215.14", "169.254.169.254"},
		"mapped.example":   {"::ffff:127.0.0.1"},
		"ok.example":       {"10.0.0.7", "fd00::7"},
		"loopback.example": {"127.0.0.1"},
	}}
	rec := &recordingDial{}
	d := &PolicyDialer{Policy: &AddressPolicy{}, Resolver: res, Dial: rec.dial}
	ctx := context.Background()

	for _, addr := range []string{"rebind.example:443", "mapped.example:443", "loopback.example:80", "127.0.0.1:80", "[::1]:80", "[::ffff:169.254.169.254]:80"} {
		_, err := d.DialContext(ctx, "tcp", addr)
		var b *BlockedError
		if !errors.As(err, &b) {
			t.Errorf("%s: err = %v, want a *BlockedError", addr, err)
		}
	}
	if len(rec.addrs) != 0 {
		t.Fatalf("blocked names were dialled: %v", rec.addrs)
	}

	_, _ = d.DialContext(ctx, "tcp", "ok.example:8443")
	if want := []string{"10.0.0.7:8443", "[fd00::7]:8443"}; strings.Join(rec.addrs, " ") != strings.Join(want, " ") {
		t.Errorf("dialled %v, want the checked literals %v", rec.addrs, want)
	}

	if _, err := d.DialContext(ctx, "tcp", "missing.example:443"); err == nil || errors.As(err, new(*BlockedError)) {
		t.Errorf("an unknown name gave %v, want a DNS error", err)
	}
}

// TestPolicyDialerControlHook: the production dialer checks the socket address once more,
// right before the kernel connects, so even a caller that skips the resolver step is refused.
// The address is loopback: nothing leaves the host, and the hook refuses it before connect.
func TestPolicyDialerControlHook(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	blocked := NewPolicyDialer(&AddressPolicy{})
	if _, err := blocked.Dial(context.Background(), "tcp", ln.Addr().String()); !errors.As(err, new(*BlockedError)) {
		t.Fatalf("raw dial to loopback: err = %v, want a *BlockedError from the Control hook", err)
	}

	allowed := NewPolicyDialer(&AddressPolicy{Allow: mustCIDRs(t, "127.0.0.0/8")})
	conn, err := allowed.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("loopback allowed by --outbound-allow-cidrs: %v", err)
	}
	conn.Close()
}

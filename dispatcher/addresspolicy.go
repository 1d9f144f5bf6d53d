package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
)

// Flags of the manager that change the outbound address policy. They are named in every
// BlockedError, so that a user reading a delivery's status knows what to change.
const (
	FlagOutboundAllowCIDRs = "--outbound-allow-cidrs"
	FlagOutboundDenyCIDRs  = "--outbound-deny-cidrs"
)

// specialRange is a range denied by default, with the words a user reads in a BlockedError.
type specialRange struct {
	prefix netip.Prefix
	reason string
}

// defaultDenied are the ranges no webhook should reach: the operator's own host and pod, cloud
// metadata services, and ranges that are not unicast destinations on the internet. Private
// ranges (10/8, 172.16/12, 192.168/16, fc00::/7) are allowed: in-cluster receivers are common.
// IPv6 addresses that embed an IPv4 address are checked on the IPv4 address (see Check).
var defaultDenied = func() []specialRange {
	rs := []struct{ cidr, reason string }{
		{"0.0.0.0/8", "unspecified (this network)"},
		{"127.0.0.0/8", "loopback"},
		{"169.254.0.0/16", "link-local (cloud metadata such as 169.254.169.254)"},
		{"100.64.0.0/10", "shared address space (CGNAT; cloud metadata such as 100.100.100.200)"},
		{"192.0.0.0/24", "IETF protocol assignments"},
		{"192.0.2.0/24", "documentation (TEST-NET-1)"},
		{"192.88.99.0/24", "6to4 relay anycast"},
		{"198.18.0.0/15", "benchmarking"},
		{"198.51.100.0/24", "documentation (TEST-NET-2)"},
		{"203.0.113.0/24", "documentation (TEST-NET-3)"},
		{"224.0.0.0/4", "multicast"},
		{"240.0.0.0/4", "reserved (broadcast included)"},
		{"::/128", "unspecified"},
		{"::1/128", "loopback"},
		{"::/96", "IPv4-compatible (deprecated)"},
		{"64:ff9b:1::/48", "local-use NAT64"},
		{"100::/64", "discard-only"},
		{"2001::/32", "Teredo"},
		{"2001:db8::/32", "documentation"},
		{"fd00:ec2::254/128", "cloud metadata (AWS IMDS over IPv6)"},
		{"fe80::/10", "link-local"},
		{"fec0::/10", "site-local (deprecated)"},
		{"ff00::/8", "multicast"},
	}
	out := make([]specialRange, len(rs))
	for i, r := range rs {
		out[i] = specialRange{netip.MustParsePrefix(r.cidr), r.reason}
	}
	return out
}()

var (
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
)

// AddressPolicy decides which IP addresses webhooks may be sent to. It is the operator's, set by
// manager flags; no field of an endpoint can widen it.
//
// The decision for an address, first match wins:
//  1. in Deny (--outbound-deny-cidrs): blocked. Deny wins over Allow, so that an operator can be
//     sure a denied range stays closed whatever else is configured;
//  2. in Allow (--outbound-allow-cidrs): allowed, even if a default range below holds it (this is
//     how the local dev stack allows 127.0.0.0/8);
//  3. in a default-denied range: blocked;
//  4. otherwise allowed (public and private unicast).
//
// An IPv6 address that embeds an IPv4 address (IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96,
// 6to4 2002::/16) is blocked when either it or the embedded IPv4 address is blocked, so that
// ::ffff:127.0.0.1 or 2002:a9fe:a9fe:: do not reach what 127.0.0.1 and 169.254.169.254 cannot.
type AddressPolicy struct {
	Allow []netip.Prefix
	Deny  []netip.Prefix
}

// ParseCIDRs parses a comma-separated list of CIDRs (or single addresses), as the manager flags
// take them. Empty entries are ignored.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an IP address", f)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8 or fd00::/8", f)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Check returns nil when ip may be dialled, and a *BlockedError that says why not otherwise.
func (p *AddressPolicy) Check(ip netip.Addr) error {
	if !ip.IsValid() {
		return &BlockedError{IP: ip, Reason: "not a valid IP address"}
	}
	ip = ip.WithZone("")
	if ip.Is4In6() {
		return p.Check(ip.Unmap())
	}
	if err := p.check(ip); err != nil {
		return err
	}
	if v4, ok := embeddedIPv4(ip); ok {
		if err := p.check(v4); err != nil {
			var b *BlockedError
			errors.As(err, &b)
			return &BlockedError{IP: ip, Reason: "an IPv6 address embedding " + v4.String() + ", which is " + b.Reason, Flag: b.Flag}
		}
	}
	return nil
}

func (p *AddressPolicy) check(ip netip.Addr) error {
	for _, d := range p.Deny {
		if d.Contains(ip) {
			return &BlockedError{IP: ip, Reason: "in " + d.String() + ", denied by the operator", Flag: FlagOutboundDenyCIDRs}
		}
	}
	for _, a := range p.Allow {
		if a.Contains(ip) {
			return nil
		}
	}
	for _, r := range defaultDenied {
		if r.prefix.Contains(ip) {
			return &BlockedError{IP: ip, Reason: r.reason, Flag: FlagOutboundAllowCIDRs}
		}
	}
	return nil
}

// embeddedIPv4 returns the IPv4 address that a NAT64 or 6to4 address carries.
func embeddedIPv4(ip netip.Addr) (netip.Addr, bool) {
	b := ip.As16()
	switch {
	case nat64Prefix.Contains(ip):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	}
	return netip.Addr{}, false
}

// BlockedError is an address refused by the outbound address policy. Its message names the
// policy, the address (never the URL, which may hold a token) and the flag that changes it.
type BlockedError struct {
	IP     netip.Addr
	Reason string
	// Flag is the manager flag that would change the decision.
	Flag string
}

func (e *BlockedError) Error() string {
	msg := "blocked by the outbound address policy: " + e.IP.String() + " is " + e.Reason
	switch e.Flag {
	case FlagOutboundAllowCIDRs:
		msg += " (the operator can allow it with the manager flag " + FlagOutboundAllowCIDRs + ")"
	case FlagOutboundDenyCIDRs:
		msg += " (see the manager flag " + FlagOutboundDenyCIDRs + ")"
	}
	return msg
}

// Resolver looks up a host's addresses; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// DialFunc opens a connection to a literal ip:port address.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// PolicyDialer is a transport dialer that enforces an AddressPolicy on the IP actually dialled:
// it resolves the host itself, checks every address it got (one blocked address blocks them
// all, so a DNS answer that mixes a public and a loopback address gets nowhere), and dials the
// checked addresses as literals, so no second lookup can return something else (DNS
// rebinding). Every connection, redirects and retries of the transport included, goes through
// it.
type PolicyDialer struct {
	Policy *AddressPolicy
	// Resolver defaults to net.DefaultResolver.
	Resolver Resolver
	// Dial defaults to a net.Dialer whose Control hook checks the socket address once more.
	Dial DialFunc
}

// NewPolicyDialer is the production dialer for policy.
func NewPolicyDialer(policy *AddressPolicy) *PolicyDialer {
	d := &net.Dialer{
		// The second, independent check, on the address the kernel is asked to connect to.
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return &BlockedError{Reason: "not an IP address: " + address}
			}
			return policy.Check(ap.Addr())
		},
	}
	return &PolicyDialer{Policy: policy, Resolver: net.DefaultResolver, Dial: d.DialContext}
}

// DialContext is an http.Transport DialContext.
func (d *PolicyDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		lookup := "ip"
		switch network {
		case "tcp4":
			lookup = "ip4"
		case "tcp6":
			lookup = "ip6"
		}
		resolver := d.Resolver
		if resolver == nil {
			resolver = net.DefaultResolver
		}
		ips, err = resolver.LookupNetIP(ctx, lookup, host)
		if err != nil {
			return nil, err
		}
		if len(ips) == 0 {
			return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		}
	}
	for _, ip := range ips {
		if err := d.Policy.Check(ip); err != nil {
			return nil, err
		}
	}
	dial := d.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	var firstErr error
	for _, ip := range ips {
		conn, err := dial(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}

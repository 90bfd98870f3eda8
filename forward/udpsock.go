package forward

import (
	"net"
	"net/netip"
)

// publicUDP is a UDP tunnel's public socket. Bound to every address, it
// learns each datagram's destination address (IP_PKTINFO, IPV6_PKTINFO)
// and sends the replies from that address, so a server with several
// addresses answers from the one the user wrote to: from any other, the
// user's NAT or firewall would drop the reply.
type publicUDP struct {
	pc    net.PacketConn
	uc    *net.UDPConn // pc, when it is a kernel socket
	local netip.AddrPort
	// pktinfo: the socket reports destinations and takes a source per
	// datagram; v6info: through IPv6 control messages (a dual-stack socket).
	pktinfo, v6info bool
}

func newPublicUDP(pc net.PacketConn) *publicUDP {
	p := &publicUDP{pc: pc, local: addrPortOf(pc.LocalAddr())}
	if uc, ok := pc.(*net.UDPConn); ok {
		p.uc = uc
		if p.local.Addr().IsUnspecified() {
			p.pktinfo, p.v6info = enablePktinfo(uc)
		}
	}
	return p
}

// oobSize is room for the control messages one read returns.
const oobSize = 64

// read reads one datagram into b: its size, the sender, and the address it
// was sent to.
func (p *publicUDP) read(b, oob []byte) (int, netip.AddrPort, netip.Addr, error) {
	if p.uc == nil {
		n, from, err := p.pc.ReadFrom(b)
		return n, addrPortOf(from), p.local.Addr(), err
	}
	if !p.pktinfo {
		n, from, err := p.uc.ReadFromUDPAddrPort(b)
		return n, from, p.local.Addr(), err
	}
	n, oobn, _, from, err := p.uc.ReadMsgUDPAddrPort(b, oob)
	dst := p.local.Addr()
	if a, ok := pktinfoDst(oob[:oobn]); ok {
		dst = a
	}
	return n, from, dst, err
}

// sourceOOB is the control message that makes a reply leave from the
// address src; nil when the socket's own address does.
func (p *publicUDP) sourceOOB(src netip.Addr) []byte {
	if !p.pktinfo || !src.IsValid() || src.IsUnspecified() {
		return nil
	}
	return pktinfoSrc(src, p.v6info)
}

// write sends b to a user from the address oob names.
func (p *publicUDP) write(b []byte, to netip.AddrPort, oob []byte) error {
	if p.uc == nil {
		_, err := p.pc.WriteTo(b, net.UDPAddrFromAddrPort(to))
		return err
	}
	if oob == nil {
		_, err := p.uc.WriteToUDPAddrPort(b, to)
		return err
	}
	_, _, err := p.uc.WriteMsgUDPAddrPort(b, oob, to)
	return err
}

func (p *publicUDP) close() error { return p.pc.Close() }

package forward

import (
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

// enablePktinfo asks a socket bound to every address for each datagram's
// destination address: through IPv6 control messages on a dual-stack
// socket (IPv4 destinations come as IPv4-mapped addresses), else IPv4 ones.
func enablePktinfo(c *net.UDPConn) (ok, v6 bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return false, false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_RECVPKTINFO, 1)
		if serr == nil {
			v6 = true
			return
		}
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_PKTINFO, 1)
	}); err != nil || serr != nil {
		return false, false
	}
	return true, v6
}

// pktinfoDst finds the destination address in a read's control messages,
// without allocating.
func pktinfoDst(oob []byte) (netip.Addr, bool) {
	for len(oob) >= syscall.SizeofCmsghdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < syscall.SizeofCmsghdr || l > len(oob) {
			break
		}
		data := oob[syscall.CmsgLen(0):l]
		switch {
		case h.Level == syscall.IPPROTO_IPV6 && h.Type == syscall.IPV6_PKTINFO && len(data) >= syscall.SizeofInet6Pktinfo:
			return netip.AddrFrom16([16]byte(data[:16])).Unmap(), true
		case h.Level == syscall.IPPROTO_IP && h.Type == syscall.IP_PKTINFO && len(data) >= syscall.SizeofInet4Pktinfo:
			// struct in_pktinfo: ifindex, spec_dst, addr (the header's destination).
			return netip.AddrFrom4([4]byte(data[8:12])), true
		}
		next := syscall.CmsgSpace(l - syscall.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return netip.Addr{}, false
}

// pktinfoSrc is a control message that sends a datagram from src.
func pktinfoSrc(src netip.Addr, v6 bool) []byte {
	if v6 {
		b := make([]byte, syscall.CmsgSpace(syscall.SizeofInet6Pktinfo))
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = syscall.IPPROTO_IPV6, syscall.IPV6_PKTINFO
		h.SetLen(syscall.CmsgLen(syscall.SizeofInet6Pktinfo))
		v := src.As16() // IPv4 as IPv4-mapped
		copy(b[syscall.CmsgLen(0):], v[:])
		return b
	}
	if !src.Is4() {
		return nil
	}
	b := make([]byte, syscall.CmsgSpace(syscall.SizeofInet4Pktinfo))
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = syscall.IPPROTO_IP, syscall.IP_PKTINFO
	h.SetLen(syscall.CmsgLen(syscall.SizeofInet4Pktinfo))
	v := src.As4()
	copy(b[syscall.CmsgLen(0)+4:], v[:]) // spec_dst: the source to use
	return b
}

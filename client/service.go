package client

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/thresholdtunnel/threshold/forward"
	"github.com/thresholdtunnel/threshold/strictjson"
)

// Service is a value of ServiceToLocalAddrMap, in one of two forms:
//
//	"web": "127.0.0.1:9001"
//	"web": { "Address": "127.0.0.1:9001", "ProxyProtocol": 2 }
//
// With the string form the server decides per tunnel whether the backend
// gets a PROXY header (HaProxyProxyProtocol), as it always did. With the
// object form the client decides: ProxyProtocol 0 (also when left out)
// means none, and a connection the server asks a header for is refused;
// 1 or 2 means that header, whatever the server asks. Either way a header
// is only sent for a source address the client believes
// (ProxySourceAllowCIDRs).
type Service struct {
	Address string
	// ProxyProtocol is the client's choice; nil for the string form.
	ProxyProtocol *int `json:",omitempty"`
	// UdpProxyProtocolMode says, for a UDP tunnel to a service choosing
	// ProxyProtocol 2, which datagrams carry the header: "every" (the
	// default) or "first" of a session, as the server's tunnel field of the
	// same name does when the server decides.
	UdpProxyProtocolMode string `json:",omitempty"`
}

// Addr is a Service of the string form.
func Addr(hostPort string) Service { return Service{Address: hostPort} }

// WithProxy is a Service of the object form: version 0 (none), 1 or 2.
func WithProxy(hostPort string, version int) Service {
	return Service{Address: hostPort, ProxyProtocol: &version}
}

// JSONShapes tells strictjson the two forms, so that an object is checked
// field by field (unknown and case-folded names, types) with positions.
func (Service) JSONShapes() []any { return []any{"", Service{}} }

var errProxyVersion = errors.New("ProxyProtocol must be 0 (none), 1 or 2")

// UnmarshalJSON reads either form.
func (s *Service) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var addr string
		if err := json.Unmarshal(b, &addr); err != nil {
			return err
		}
		*s = Service{Address: addr}
		return nil
	}
	type object Service // without these methods
	var o object
	if err := json.Unmarshal(b, &o); err != nil {
		return err
	}
	if o.ProxyProtocol == nil {
		o.ProxyProtocol = new(int) // the object form: the client's choice, none
	}
	if v := *o.ProxyProtocol; v < 0 || v > 2 {
		return fmt.Errorf("%w, not %d", errProxyVersion, v)
	}
	if err := checkUDPMode(o.UdpProxyProtocolMode, *o.ProxyProtocol); err != nil {
		return err
	}
	*s = Service(o)
	return nil
}

// MarshalJSON writes the form it was read in.
func (s Service) MarshalJSON() ([]byte, error) {
	if s.ProxyProtocol == nil {
		return json.Marshal(s.Address)
	}
	return json.Marshal(struct {
		Address              string
		ProxyProtocol        int
		UdpProxyProtocolMode string `json:",omitempty"`
	}{s.Address, *s.ProxyProtocol, s.UdpProxyProtocolMode})
}

// checkUDPMode refuses a mode other than the two, and one that would have
// no effect (it only says how a PROXY v2 header is sent).
func checkUDPMode(mode string, proxy int) error {
	switch {
	case mode == "":
		return nil
	case mode != forward.UDPProxyEvery && mode != forward.UDPProxyFirst:
		return fmt.Errorf("UdpProxyProtocolMode %q is not %q or %q", mode, forward.UDPProxyEvery, forward.UDPProxyFirst)
	case proxy != 2:
		return fmt.Errorf("UdpProxyProtocolMode %q needs ProxyProtocol 2 (it says which datagrams carry the header)", mode)
	}
	return nil
}

var _ strictjson.Shaper = Service{}

package server

import (
	"github.com/thresholdtunnel/threshold/wg"
)

// refusedHandshake says why WireGuard refused a handshake, and what to
// check: wireguard-go itself says nothing above debug level. The device
// bounds the calls (once a minute per source, a few a second in all).
func (s *Server) refusedHandshake(r wg.RefusedHandshake) {
	if r.WrongKey {
		s.log.Info("WireGuard handshake refused: it was made for another server's public key. "+
			"If this is your client, its ServerPublicKey is wrong: set it to this server's public_key (below)",
			"from", r.From.String(), "public_key", s.key.PublicKey().String())
		return
	}
	s.log.Info("WireGuard handshake refused: the public key is not registered. "+
		"If this is your client, register client_public_key (below) with PUT /clients/{ClientId} {\"PublicKey\": \"...\"} (or in the Clients of server.json, which count until a StateDir holds state)",
		"from", r.From.String(), "client_public_key", r.PublicKey.String())
}

// Copyright 2026 The threshold Authors.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

package tcp

// Not upstream gVisor: threshold's delayed ACK (tcpip.TCPDelayedACK). The
// hooks that call into here are in gvisor-changes/010-delayed-ack.patch:
// the option in protocol.go, the sender's field and its creation in
// snd.go, the ACK after a batch of segments in connect.go, the cleanup in
// endpoint.go.

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// maxDelayedACK bounds the option: beyond it a peer's tail loss probe
// (our RACK-TLP allows 10 ms for a delayed ACK, rack_fast.go) would fire
// for an ACK that is only late.
const maxDelayedACK = 10 * time.Millisecond

// delayedACK is a sender's pending ACK; nil in a sender whose stack has
// delayed ACKs off.
type delayedACK struct {
	timeout time.Duration
	timer   timer
}

// newDelayedACK is the hook at the end of newSender: the stack's option,
// read once a connection.
func newDelayedACK(s *sender) *delayedACK {
	var opt tcpip.TCPDelayedACK
	if err := s.ep.stack.TransportProtocolOption(ProtocolNumber, &opt); err != nil || opt <= 0 {
		return nil
	}
	d := &delayedACK{timeout: time.Duration(opt)}
	d.timer.init(s.ep.stack.Clock(), timerHandler(s.ep, s.delayedACKExpired))
	return d
}

// ackProcessed is the hook where upstream acknowledges a processed batch of
// segments at once (handleSegmentsLocked, when RcvNxt is past what was
// last acknowledged): less than a full segment of in-order data waits for
// a reply to carry its ACK, up to the timeout; anything else is
// acknowledged now.
//
// +checklocks:s.ep.mu
func (s *sender) ackProcessed() {
	d := s.delack
	if d == nil || s.ep.EndpointState() != StateEstablished || !s.ackMayWait() {
		s.sendAck()
		return
	}
	if !d.timer.enabled() {
		d.timer.enable(d.timeout)
	}
}

// ackMayWait reports whether the data not yet acknowledged is less than a
// full segment, all of it in order.
//
// +checklocks:s.ep.mu
func (s *sender) ackMayWait() bool {
	r := s.ep.rcv
	unacked := s.MaxSentAck.Size(r.RcvNxt)
	return unacked > 0 && unacked < seqnum.Size(s.MaxPayloadSize) &&
		len(r.pendingRcvdSegments) == 0 && s.ep.sack.NumBlocks == 0
}

// delayedACKExpired sends the held ACK unless a segment sent since has
// carried it.
//
// +checklocks:s.ep.mu
func (s *sender) delayedACKExpired() tcpip.Error {
	d := s.delack
	if d == nil || d.timer.isUninitialized() || !d.timer.checkExpiration() {
		return nil
	}
	if s.ep.EndpointState().connected() && s.ep.rcv.RcvNxt != s.MaxSentAck {
		s.sendAck()
	}
	return nil
}

// delayedACKCleanup is the hook in the endpoint's cleanup, beside the
// sender's other timers.
func (s *sender) delayedACKCleanup() {
	if s.delack != nil {
		s.delack.timer.cleanup()
	}
}

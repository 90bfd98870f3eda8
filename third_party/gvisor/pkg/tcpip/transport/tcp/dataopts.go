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

import "gvisor.dev/gvisor/pkg/tcpip/header"

// Upstream sizes every data segment for the worst case of options: the
// timestamp and three SACK blocks, 40 bytes, although a data segment
// carries SACK blocks only while this end holds out-of-order data of its
// own, and every out-of-order arrival is answered at once by a pure ACK
// that carries them (receiver.handleRcvdSegment). So a bulk sender gave up
// 28 bytes of every segment (2% of a 1,420-byte tunnel MTU) for options it
// never sent. Here a data segment is sized for the options it always
// carries (the timestamp, when negotiated), and SACK blocks ride on a data
// segment only where they fit under the MSS; pure ACKs carry all of them,
// as before. This is Linux's rule too (tcp_current_mss counts the SACK
// blocks of the moment, and shrinks the segment instead).

// dataOptionSize is the size of the options every segment of the
// connection carries: the timestamp option and its padding, if
// negotiated.
//
// +checklocks:e.mu
func (e *Endpoint) dataOptionSize() int {
	options := e.makeOptions(nil)
	size := len(options)
	putOptions(options)
	return size
}

// sackBlocksThatFit trims blocks to those that fit in a segment of
// payload bytes without taking it over the MSS: a pure ACK or a short
// segment takes them all (as many as the option space holds), a full or
// GSO segment none.
//
// +checklocks:e.mu
func (e *Endpoint) sackBlocksThatFit(blocks []header.SACKBlock, payload int) []header.SACKBlock {
	if len(blocks) == 0 || payload == 0 || e.snd == nil {
		return blocks
	}
	room := e.snd.MaxPayloadSize - payload
	// Two NOPs for alignment, the option's kind and length, 8 bytes a block.
	n := 0
	if room >= 4 {
		n = (room - 4) / 8
	}
	if n < len(blocks) {
		blocks = blocks[:n]
	}
	return blocks
}

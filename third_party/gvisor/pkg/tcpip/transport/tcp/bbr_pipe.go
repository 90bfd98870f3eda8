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

// Not upstream gVisor: the RFC 6675 pipe from the SACK scoreboard's blocks,
// for BBR senders (the hook is at the top of SetPipe).
//
// Upstream's SetPipe walks the whole write list in SMSS steps on every ACK
// during recovery, with two B-tree lookups per step (IsSACKED, IsRangeLost):
// O(window) per ACK. With a window of a few thousand packets (100 Mbit/s at
// 30 ms with holes from 1% loss) it took 46% of the sending process's CPU
// on the WAN bench, which then ran a core flat out and fell behind its own
// pacing. The same quantity follows from the blocks alone, which are few
// (one per hole): an unSACKed octet is lost (IsRangeLost) once three blocks
// or two SMSS of SACKed bytes lie above it, so everything below some point
// L is lost and everything above it is not; the pipe is the unSACKed bytes
// above L, plus the unSACKed bytes up to HighRxt (retransmitted), as
// upstream counts them.

import (
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// bbrSetPipe sets Outstanding to the pipe and reports true for a BBR
// sender; false leaves it to upstream's walk.
//
// +checklocks:s.ep.mu
func (s *sender) bbrSetPipe() bool {
	if s.bbr == nil {
		return false
	}
	s.Outstanding = scoreboardPipe(s.ep.scoreboard, s.SndUna, s.SndNxt, s.FastRecovery.HighRxt)
	return true
}

// scoreboardPipe is the pipe, in SMSS-sized packets, of the sequence space
// [una, nxt) with the SACKed blocks of sb and retransmissions up to
// highRxt.
func scoreboardPipe(sb *SACKScoreboard, una, nxt, highRxt seqnum.Value) int {
	smss := seqnum.Size(sb.SMSS())
	if smss == 0 || !una.LessThan(nxt) {
		return 0
	}
	// Walk the blocks from the top: the loss line is the start of the
	// block that makes three blocks or two SMSS of SACKed bytes.
	lossLine := una
	var blocks int
	var above seqnum.Size // SACKed bytes at or above lossLine
	var total seqnum.Size // SACKed bytes in [una, nxt)
	tipped := false
	sb.ranges.Descend(func(b header.SACKBlock) bool {
		start, end := b.Start, b.End
		if !una.LessThan(end) || !start.LessThan(nxt) {
			return una.LessThan(end) // below una: stop; above nxt: skip
		}
		if start.LessThan(una) {
			start = una
		}
		if nxt.LessThan(end) {
			end = nxt
		}
		n := start.Size(end)
		total += n
		if !tipped {
			blocks++
			above += n
			if blocks >= nDupAckThreshold || above >= seqnum.Size(nDupAckThreshold-1)*smss {
				tipped = true
				lossLine = start
			}
		}
		return true
	})
	if !tipped {
		above = total
	}
	// UnSACKed bytes above the loss line are in flight; below it lost.
	inFlight := lossLine.Size(nxt) - above
	// Retransmitted (at or below highRxt) and unSACKed bytes count once
	// more, as upstream's rule (b).
	var rexmit seqnum.Size
	if h := highRxt.Add(1); una.LessThan(h) {
		if nxt.LessThan(h) {
			h = nxt
		}
		rexmit = una.Size(h) - sackedIn(sb, una, h)
	}
	return int((inFlight+smss-1)/smss) + int((rexmit+smss-1)/smss)
}

// sackedIn is the number of SACKed bytes in [from, to).
func sackedIn(sb *SACKScoreboard, from, to seqnum.Value) seqnum.Size {
	var n seqnum.Size
	sb.ranges.Ascend(func(b header.SACKBlock) bool {
		if !b.Start.LessThan(to) {
			return false
		}
		start, end := b.Start, b.End
		if start.LessThan(from) {
			start = from
		}
		if to.LessThan(end) {
			end = to
		}
		if start.LessThan(end) {
			n += start.Size(end)
		}
		return true
	})
	return n
}

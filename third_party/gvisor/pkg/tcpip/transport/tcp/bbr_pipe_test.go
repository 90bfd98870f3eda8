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

import (
	"math/rand/v2"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// upstreamPipe is SetPipe's walk, over SMSS-sized segments: the reference.
func upstreamPipe(sb *SACKScoreboard, una, nxt, highRxt seqnum.Value) int {
	smss := seqnum.Size(sb.SMSS())
	pipe := 0
	for s1 := una; s1.LessThan(nxt); s1 = s1.Add(smss) {
		end := s1.Add(smss)
		if nxt.LessThan(end) {
			end = nxt
		}
		r := header.SACKBlock{Start: s1, End: end}
		if sb.IsSACKED(r) {
			continue
		}
		if !sb.IsRangeLost(r) {
			pipe++
		}
		if s1.LessThanEq(highRxt) {
			pipe++
		}
	}
	return pipe
}

// TestScoreboardPipeMatchesUpstream: the pipe from the blocks must equal
// upstream's per-segment walk on random scoreboards (holes of random
// lengths, blocks on SMSS boundaries as segments are, a random HighRxt,
// sequence numbers across the wrap).
func TestScoreboardPipeMatchesUpstream(t *testing.T) {
	const smss = 1368
	rng := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < 3000; iter++ {
		una := seqnum.Value(rng.Uint32())
		if iter%3 == 0 {
			una = seqnum.Value(0xffffffff - uint32(rng.IntN(50*smss)))
		}
		sb := NewSACKScoreboard(smss, una)
		pkts := 1 + rng.IntN(400)
		nxt := una.Add(seqnum.Size(pkts * smss))
		for i := 1; i < pkts; {
			hole := 1 + rng.IntN(4)
			if rng.IntN(3) == 0 {
				hole = 0
			}
			i += hole
			run := 1 + rng.IntN(20)
			if i+run > pkts {
				run = pkts - i
			}
			if run > 0 && rng.IntN(5) != 0 {
				sb.Insert(header.SACKBlock{Start: una.Add(seqnum.Size(i * smss)), End: una.Add(seqnum.Size((i + run) * smss))})
			}
			i += run
		}
		highRxt := una.Add(seqnum.Size(rng.IntN(pkts*smss+1))) - 1
		if rng.IntN(4) == 0 {
			highRxt = una - 1 // nothing retransmitted
		}
		got := scoreboardPipe(sb, una, nxt, highRxt)
		want := upstreamPipe(sb, una, nxt, highRxt)
		if got != want {
			t.Fatalf("iteration %d: una %d nxt %d highRxt %d, blocks %s: pipe %d, upstream's walk %d", iter, una, nxt, highRxt, sb, got, want)
		}
	}
}

// TestScoreboardPipeSmallSegments: with blocks smaller than SMSS the
// three-block rule decides loss before the bytes rule does. Judged per
// quarter-SMSS unit with upstream's IsSACKED and IsRangeLost, in bytes
// rounded up to SMSS packets as scoreboardPipe counts (upstream counts a
// segment shorter than SMSS as one packet; the blocks do not know the
// segments).
func TestScoreboardPipeSmallSegments(t *testing.T) {
	const smss, unit = 1368, 1368 / 4
	rng := rand.New(rand.NewPCG(5, 6))
	for iter := 0; iter < 3000; iter++ {
		una := seqnum.Value(rng.Uint32())
		sb := NewSACKScoreboard(smss, una)
		units := 1 + rng.IntN(200)
		nxt := una.Add(seqnum.Size(units * unit))
		for i := 1; i < units; {
			i += 1 + rng.IntN(3)
			run := 1 + rng.IntN(3)
			if i+run > units {
				run = units - i
			}
			if run > 0 {
				sb.Insert(header.SACKBlock{Start: una.Add(seqnum.Size(i * unit)), End: una.Add(seqnum.Size((i + run) * unit))})
			}
			i += run
		}
		highRxt := una.Add(seqnum.Size(rng.IntN(units+1)*unit)) - 1
		var inFlight, rexmit int
		for u := 0; u < units; u++ {
			r := header.SACKBlock{Start: una.Add(seqnum.Size(u * unit)), End: una.Add(seqnum.Size((u + 1) * unit))}
			if sb.IsSACKED(r) {
				continue
			}
			if !sb.IsRangeLost(r) {
				inFlight += unit
			}
			if r.Start.LessThanEq(highRxt) {
				rexmit += unit
			}
		}
		want := (inFlight+smss-1)/smss + (rexmit+smss-1)/smss
		if got := scoreboardPipe(sb, una, nxt, highRxt); got != want {
			t.Fatalf("iteration %d: una %d nxt %d highRxt %d, blocks %s: pipe %d, want %d", iter, una, nxt, highRxt, sb, got, want)
		}
	}
}

func BenchmarkScoreboardPipe(b *testing.B) {
	const smss = 1368
	una := seqnum.Value(1000)
	sb := NewSACKScoreboard(smss, una)
	// 6000 packets with a hole every 100: a window at 1% loss.
	for i := 1; i < 6000; i += 100 {
		sb.Insert(header.SACKBlock{Start: una.Add(seqnum.Size(i * smss)), End: una.Add(seqnum.Size((i + 99) * smss))})
	}
	nxt := una.Add(6000 * smss)
	b.Run("blocks", func(b *testing.B) {
		for range b.N {
			scoreboardPipe(sb, una, nxt, una.Add(10*smss))
		}
	})
	b.Run("upstream", func(b *testing.B) {
		for range b.N {
			upstreamPipe(sb, una, nxt, una.Add(10*smss))
		}
	})
}

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
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

func TestKarnRTT(t *testing.T) {
	t0 := tcpip.MonotonicTime{}.Add(time.Second)
	at := func(ms int) tcpip.MonotonicTime { return t0.Add(time.Duration(ms) * time.Millisecond) }
	seg := func(sentMS int, xmits uint32, sacked bool) *segment {
		return &segment{xmitTime: at(sentMS), xmitCount: xmits, acked: sacked}
	}
	type ackOf struct {
		sacked, acked []*segment
	}
	for _, c := range []struct {
		name string
		ack  ackOf
		want time.Duration // 0: no sample
	}{
		{"cumulative, from the earliest send", ackOf{acked: []*segment{seg(10, 1, false), seg(12, 1, false)}}, 90 * time.Millisecond},
		{"a resent segment acknowledged: no sample (Karn)", ackOf{acked: []*segment{seg(10, 2, false), seg(12, 1, false)}}, 0},
		// The lost segment's first send was at 0 ms; it was resent at 80
		// ms and is acknowledged now: upstream's one-a-round-trip timer
		// took 100 ms here.
		{"only a resent segment", ackOf{acked: []*segment{seg(80, 2, false)}}, 0},
		{"SACKed before: no cumulative sample", ackOf{acked: []*segment{seg(10, 1, true)}}, 0},
		{"newly SACKed, when the cumulative part has none", ackOf{sacked: []*segment{seg(30, 1, false), seg(20, 1, false)}, acked: []*segment{seg(5, 3, false)}}, 80 * time.Millisecond},
		{"a resent segment SACKed: not a sample", ackOf{sacked: []*segment{seg(85, 2, false)}}, 0},
		{"cumulative wins over SACK", ackOf{sacked: []*segment{seg(50, 1, false)}, acked: []*segment{seg(40, 1, false)}}, 60 * time.Millisecond},
	} {
		var s sender
		s.karn = karnSample{firstAcked: at(1), retransAck: true} // the ACK before
		s.karnReset()
		for _, g := range c.ack.sacked {
			s.karnSACKed(g)
		}
		for _, g := range c.ack.acked {
			s.karnAcked(g)
		}
		got, ok := s.karnRTT(at(100))
		if c.want == 0 {
			if ok {
				t.Errorf("%s: sample %v, want none", c.name, got)
			}
			continue
		}
		if !ok || got != c.want {
			t.Errorf("%s: sample %v (%v), want %v", c.name, got, ok, c.want)
		}
	}
}

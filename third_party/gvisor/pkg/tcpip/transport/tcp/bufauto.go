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

// Not upstream gVisor: threshold's buffer auto-tuning factors, used by
// ModerateRecvBuf and computeTCPSendBufferSize (endpoint.go, through
// gvisor-changes/002-buffer-autotune.patch).
//
// Upstream sizes the receive buffer to twice what the application read in
// the last round trip, and the send buffer to twice the congestion window.
// Both assume that what is unacknowledged is about what is in flight. Under
// random loss it is not: with 1% loss a window holds several holes, the
// receiver keeps everything above them (out of order, so the application
// cannot read it and the auto-tuning sees a slower reader), and the sender
// keeps the same bytes (SACKed, not yet acknowledged). On the WAN bench at
// 30 ms and 1% loss both buffers filled during every recovery and the
// sender stopped, with its window open and its pacer idle. A BBR sender
// keeps sending during recovery, so it needs room for a window of holes on
// top of its flight.

const (
	// rcvAutoCopiedFactor: the receive buffer holds this many round
	// trips of what the application read (upstream: 2).
	rcvAutoCopiedFactor = 4
	// sndBufAutoFactorBBR: a BBR sender's buffer holds this many
	// congestion windows (upstream, and here for reno and cubic: 2).
	sndBufAutoFactorBBR = 4
	sndBufAutoFactor    = 2
)

// sndBufAutoFactor is how many congestion windows of data the send buffer
// auto-tunes to.
//
// +checklocks:e.mu
func (e *Endpoint) sndBufAutoFactor() int {
	if e.snd != nil && e.snd.bbr != nil {
		return sndBufAutoFactorBBR
	}
	return sndBufAutoFactor
}

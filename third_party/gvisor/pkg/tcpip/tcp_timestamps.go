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

package tcpip

// TCPTimestampsEnabled is whether a stack's connections offer the TCP
// timestamps option (RFC 7323) in the SYNs they send; it is on by default,
// as upstream has it. A stack with it off still answers a SYN that offers
// timestamps with timestamps, so it only changes the connections it opens,
// and only takes timestamps out of the connections between two stacks
// that both have it off.
//
// Off saves 12 bytes of every segment. That is worth having where the
// stacks talk through a tunnel that already gives what timestamps are
// for: WireGuard drops any duplicated packet and any older than its replay
// window, so no old segment can reach the stack from before a sequence
// number wrap (PAWS), and the RTT is sampled from send times by RACK, by
// BBR and once a round trip for the RTO.
type TCPTimestampsEnabled bool

func (*TCPTimestampsEnabled) isGettableTransportProtocolOption() {}

func (*TCPTimestampsEnabled) isSettableTransportProtocolOption() {}

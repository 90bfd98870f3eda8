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

package buffer

// A pooled chunk is cleared when it is taken (newChunk), so that the bytes
// past a view's write index are zero until written. The callers that fill
// the chunk at once paid for every byte twice, a clear and then a copy: a
// packet copied into the stack (NewViewWithData, once per packet a
// tunnel delivers), the data a TCP endpoint queues for sending
// (WriteFromReaderAndLimitedReader, up to 64 KiB a time) and a chunk
// cloned. They take the chunk uncleared instead and clear only what they
// leave unwritten (clearTail), so the chunk ends as newChunk would have
// left it and nothing else can tell.

// newChunkUncleared is newChunk without clearing a pooled chunk: the
// caller writes all of it or clears the rest.
func newChunkUncleared(size int) *chunk {
	if size > MaxChunkSize {
		return newChunk(size) // make zeroes it anyway
	}
	c := getChunkPool(size).Get().(*chunk)
	c.InitRefs()
	return c
}

// newViewUncleared is NewView over an uncleared chunk: the caller writes
// it and then calls clearTail.
func newViewUncleared(cap int) *View {
	c := newChunkUncleared(cap)
	v := viewPool.Get().(*View)
	*v = View{chunk: c}
	return v
}

// clearTail zeroes v's chunk past its write index.
func (v *View) clearTail() {
	clear(v.chunk.data[v.write:])
}

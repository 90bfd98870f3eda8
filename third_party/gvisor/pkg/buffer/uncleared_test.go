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

import (
	"bytes"
	"io"
	"testing"
)

// dirtyChunk puts a chunk of size full of 0xff back into its pool and
// returns it, so that the next take of that size likely reuses it.
func dirtyChunk(size int) *chunk {
	v := NewViewSize(size)
	for i := range v.chunk.data {
		v.chunk.data[i] = 0xff
	}
	c := v.chunk
	v.Release()
	return c
}

// checkView fails unless v holds want and its chunk is zero past it.
func checkView(t *testing.T, what string, v *View, want []byte) {
	t.Helper()
	if !bytes.Equal(v.AsSlice(), want) {
		t.Fatalf("%s: view holds %d bytes, not the %d written", what, v.Size(), len(want))
	}
	for i, b := range v.chunk.data[v.write:] {
		if b != 0 {
			t.Fatalf("%s: byte %d past the data is %#x, want 0 (a reused chunk left uncleared)", what, i, b)
		}
	}
}

// TestUnclearedChunksEndCleared: the callers that take a pooled chunk
// uncleared (NewViewWithData, WriteFromReaderAndLimitedReader, Clone)
// leave it as newChunk would, zero past what they wrote, also when the
// pool hands back a chunk full of old bytes.
func TestUnclearedChunksEndCleared(t *testing.T) {
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5}, 300) // 1,500 bytes: a 2 KiB chunk
	reused := 0
	for range 200 {
		old := dirtyChunk(2048)
		v := NewViewWithData(data)
		if v.chunk == old {
			reused++
		}
		checkView(t, "NewViewWithData", v, data)
		v.Release()

		old = dirtyChunk(2048)
		var b Buffer
		if n, err := b.WriteFromReaderAndLimitedReader(bytes.NewReader(data), int64(len(data)), nil); err != nil || n != int64(len(data)) {
			t.Fatalf("WriteFromReaderAndLimitedReader: %d, %v", n, err)
		}
		w := b.data.Front()
		if w.chunk == old {
			reused++
		}
		checkView(t, "WriteFromReaderAndLimitedReader", w, data)
		b.Release()

		src := NewViewWithData(data)
		dirtyChunk(2048)
		c := src.chunk.Clone()
		if !bytes.Equal(c.data, src.chunk.data) {
			t.Fatal("Clone: the copy differs")
		}
		c.DecRef()
		src.Release()
	}
	if reused == 0 {
		t.Fatal("the pool never handed back the dirty chunk: the test checked nothing")
	}
}

// TestUnclearedLargeView: above MaxChunkSize chunks are not pooled and
// the callers still work.
func TestUnclearedLargeView(t *testing.T) {
	data := bytes.Repeat([]byte{7}, MaxChunkSize+100)
	v := NewViewWithData(data)
	checkView(t, "NewViewWithData, large", v, data)
	v.Release()
	var b Buffer
	if _, err := b.WriteFromReaderAndLimitedReader(io.LimitReader(bytes.NewReader(data), int64(len(data))), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
	if b.Size() != int64(len(data)) {
		t.Fatalf("buffer holds %d bytes, want %d", b.Size(), len(data))
	}
	b.Release()
}

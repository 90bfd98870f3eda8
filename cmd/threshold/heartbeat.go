package main

import (
	"bytes"
	"encoding/binary"
)

// A heartbeat ping is 16 bytes: a magic, a sequence number, padding. The
// server echoes it unchanged.
var pingMagic = []byte("thb1")

const pingLen = 16

func makePing(seq uint64) []byte {
	b := make([]byte, pingLen)
	copy(b, pingMagic)
	binary.BigEndian.PutUint64(b[4:], seq)
	return b
}

func isPing(b []byte) bool { return len(b) == pingLen && bytes.HasPrefix(b, pingMagic) }

func pingSeq(b []byte) uint64 { return binary.BigEndian.Uint64(b[4:]) }

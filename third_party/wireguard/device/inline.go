/* SPDX-License-Identifier: MIT
 *
 * threshold: sealing and opening on the goroutine that read the batch.
 */

package device

import (
	"encoding/binary"

	"golang.org/x/crypto/chacha20poly1305"
)

// Upstream hands every batch to NumCPU encryption (decryption) workers and
// to the peer's sequential sender (receiver), which waits for the workers
// to release it: two goroutine wake-ups per batch per direction, each a
// futex and a scheduler switch. threshold runs on one- or two-vCPU
// machines, where the workers' parallelism buys little, so the goroutine
// that read the batch (the TUN reader, a socket's receiver) seals (opens)
// it itself and only the in-order send (delivery) is handed on. The cost:
// all of a device's sealing runs on one goroutine, as does each socket's
// opening, so a device moves at most what one core seals, about 1.2 GB/s
// of ChaCha20-Poly1305 on a small VM's core, for all its peers together.
// The workers stay, idle, so that upstream's start and shutdown order is
// unchanged.

// sealBatch encrypts a staged batch in place, as RoutineEncryption does,
// and releases it to the sequential sender.
func (device *Device) sealBatch(elemsContainer *QueueOutboundElementsContainer) {
	var paddingZeros [PaddingMultiple]byte
	var nonce [chacha20poly1305.NonceSize]byte
	mtu := int(device.tun.mtu.Load())
	for _, elem := range elemsContainer.elems {
		header := elem.buffer[:MessageTransportHeaderSize]
		binary.LittleEndian.PutUint32(header[0:4], MessageTransportType)
		binary.LittleEndian.PutUint32(header[4:8], elem.keypair.remoteIndex)
		binary.LittleEndian.PutUint64(header[8:16], elem.nonce)
		paddingSize := calculatePaddingSize(len(elem.packet), mtu)
		elem.packet = append(elem.packet, paddingZeros[:paddingSize]...)
		binary.LittleEndian.PutUint64(nonce[4:], elem.nonce)
		elem.packet = elem.keypair.send.Seal(header, nonce[:], elem.packet, nil)
	}
	elemsContainer.Unlock()
}

// openBatch decrypts a received batch in place, as RoutineDecryption does
// (a packet that fails authentication is left nil for the receiver to
// drop), and releases it to the sequential receiver.
func (device *Device) openBatch(elemsContainer *QueueInboundElementsContainer) {
	var nonce [chacha20poly1305.NonceSize]byte
	for _, elem := range elemsContainer.elems {
		counter := elem.packet[MessageTransportOffsetCounter:MessageTransportOffsetContent]
		content := elem.packet[MessageTransportOffsetContent:]
		var err error
		elem.counter = binary.LittleEndian.Uint64(counter)
		binary.LittleEndian.PutUint64(nonce[0x4:0xc], elem.counter)
		elem.packet, err = elem.keypair.receive.Open(content[:0], nonce[:], content, nil)
		if err != nil {
			elem.packet = nil
		}
	}
	elemsContainer.Unlock()
}

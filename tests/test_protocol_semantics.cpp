// What the wire protocol's fields mean, checked against docs/protocol.md rather than against our
// own encoder: for every message type, golden byte strings written by hand from the document
// (header §2, payload layouts §3: field order, widths, little-endian) are (a) decoded, every
// field checked by value, and (b) produced exactly by our encoder from the same field values.
// A bug made alike in the writer and the reader (two fields swapped, a width changed) passes a
// round trip but not these. The CRC32C fields were computed from the bytes with the independent
// CRC32C of tools/protocol_decode.py (written from §2's parameters, checked on "123456789").
// Then the documented ranges: one field of a golden payload set just outside its range must be
// refused with the documented code. The hidden case "[.protocol-json]" dumps the corpus as JSON
// for the ctest entry "protocol semantics: ..." (tools/protocol_decode.py --compare).
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <limits>

#include "protocol/crc32c.h"
#include "protocol/decoder.h"
#include "protocol/protocol.h"
#include "test_util.h"

namespace {

using namespace st::protocol;
using Bytes = std::vector<uint8_t>;

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}
Bytes fill(size_t n, uint8_t v) { return Bytes(n, v); }

// Decodes `golden` as one whole message (feeding it in one piece and byte by byte: the same
// message). check_seq off for goldens whose seq is not 0.
Message decode_one(const Bytes& golden, bool check_seq = true) {
  DecoderOptions opt;
  opt.check_sequence = check_seq;
  Message got[2];
  for (int pass = 0; pass < 2; ++pass) {
    Decoder d(opt);
    int n = 0;
    Message m;
    if (pass == 0) {
      d.feed(golden);
      while (d.next(m)) got[pass] = m, ++n;
    } else {
      for (uint8_t b : golden) {
        d.feed(&b, 1);
        while (d.next(m)) got[pass] = m, ++n;
      }
    }
    d.finish();
    REQUIRE(n == 1);
    REQUIRE(d.buffered() == 0);
  }
  REQUIRE(got[0] == got[1]);
  return got[0];
}

// Our encoder, given the golden's field values, must write exactly the golden bytes.
void check_encodes(const Bytes& golden, uint64_t seq, uint16_t version, const Body& body) {
  Bytes ours = encode(Message{seq, version, body});
  size_t at = 0;
  while (at < ours.size() && at < golden.size() && ours[at] == golden[at]) ++at;
  INFO("encoder: " << ours.size() << " bytes, golden " << golden.size()
                   << " bytes, first difference at byte " << at << " (header 0..31, payload "
                   << "offset " << (at >= 32 ? std::to_string(at - 32) : std::string("-")) << ")");
  CHECK(ours == golden);
}

// The payload of a golden with the bytes at payload offset `off` replaced.
Bytes patched(const Bytes& golden, size_t off, Bytes with) {
  Bytes p(golden.begin() + kHeaderSize, golden.end());
  REQUIRE(off + with.size() <= p.size());
  std::memcpy(p.data() + off, with.data(), with.size());
  return p;
}

ErrorCode payload_error(MessageType t, const Bytes& payload) {
  try {
    decode_payload(t, payload.data(), payload.size());
  } catch (const ProtocolError& e) {
    return e.code();
  }
  FAIL("decode_payload accepted a payload docs/protocol.md forbids");
  return ErrorCode::Internal;
}

// ---------------------------------------------------------------------------------------------
// The goldens. Header (§2): magic, u16 version, u16 type, u32 flags, u64 seq, u32 payload_size,
// u32 payload_crc, u32 header_crc; all little-endian.

// HELLO: mode Partial, both blob encodings, versions 1..3, a 4-byte token with a NUL in it.
const Bytes kHelloA = {
    0x53, 0x54, 0x57, 0x31,                          // magic "STW1"
    0x01, 0x00,                                      // version 1
    0x01, 0x00,                                      // type 1 HELLO
    0x00, 0x00, 0x00, 0x00,                          // flags 0
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x28, 0x00, 0x00, 0x00,                          // payload_size 40 = 34 + 4 + 2
    0x93, 0x19, 0x34, 0xf3,                          // payload_crc
    0x36, 0x80, 0x17, 0x78,                          // header_crc
    0x01, 0x00,                                      // 0  min_version 1
    0x03, 0x00,                                      // 2  max_version 3
    0x00,                                            // 4  mode 0 Partial
    0x03,                                            // 5  accept_blobs fp32 | fp16
    0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01,  // 6  layout_hash 0x0123456789abcdef
    0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,  // 14 weights_hash 0xf0e1d2c3b4a59687
    0x00, 0x05, 0x00, 0x00,                          // 22 frame_width 1280
    0xd0, 0x02, 0x00, 0x00,                          // 26 frame_height 720
    0x04, 0x00, 'a', 'b', 0x00, 'c',                 // 30 auth_token "ab\0c"
    0x02, 0x00, 'e', '1',                            // 36 edge_name "e1"
};

// HELLO under header version 2 (§5: HELLO is read under any version >= 1), mode Full, fp32
// only, versions 2..65535, the smallest width and the largest height, both strings empty: the
// minimum payload of 34 bytes.
const Bytes kHelloB = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x02, 0x00,                                      // version 2
    0x01, 0x00,                                      // type 1 HELLO
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x22, 0x00, 0x00, 0x00,                          // payload_size 34
    0x19, 0x4b, 0xcb, 0x6b,                          // payload_crc
    0x9c, 0xe9, 0xd1, 0x3b,                          // header_crc
    0x02, 0x00,                                      // 0  min_version 2
    0xff, 0xff,                                      // 2  max_version 65535
    0x01,                                            // 4  mode 1 Full
    0x01,                                            // 5  accept_blobs fp32
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 6  layout_hash 0
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // 14 weights_hash 2^64 - 1
    0x01, 0x00, 0x00, 0x00,                          // 22 frame_width 1
    0x00, 0x40, 0x00, 0x00,                          // 26 frame_height 16384
    0x00, 0x00,                                      // 30 auth_token ""
    0x00, 0x00,                                      // 32 edge_name ""
};

// HELLO at its maximum payload (1314 bytes): mode Naive, fp16 only, a 1024-byte token and a
// 256-byte edge name, the largest width and the smallest height.
const Bytes kHelloMax = cat({
    {
        0x53, 0x54, 0x57, 0x31,                          // magic
        0x01, 0x00,                                      // version 1
        0x01, 0x00,                                      // type 1 HELLO
        0x00, 0x00, 0x00, 0x00,                          // flags
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
        0x22, 0x05, 0x00, 0x00,                          // payload_size 1314
        0xac, 0xa4, 0x14, 0xda,                          // payload_crc
        0x4d, 0xa6, 0x39, 0x8a,                          // header_crc
        0x01, 0x00,                                      // 0  min_version 1
        0x01, 0x00,                                      // 2  max_version 1
        0x02,                                            // 4  mode 2 Naive
        0x02,                                            // 5  accept_blobs fp16
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 6  layout_hash 1
        0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 14 weights_hash 2
        0x00, 0x40, 0x00, 0x00,                          // 22 frame_width 16384
        0x01, 0x00, 0x00, 0x00,                          // 26 frame_height 1
        0x00, 0x04,                                      // 30 auth_token: length 1024
    },
    fill(1024, 't'),  //                                    32 ... 1024 x 't'
    {0x00, 0x01},     //                                    1056 edge_name: length 256
    fill(256, 'n'),   //                                    1058 ... 256 x 'n'
});

// WELCOME: mode Full, every key-frame encoding, strides 8..64, threshold 0.8, the full student
// as an fp32 blob of 3 (opaque) bytes.
const Bytes kWelcomeA = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x02, 0x00,                                      // type 2 WELCOME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x21, 0x00, 0x00, 0x00,                          // payload_size 33 = 30 + 3
    0xc0, 0x97, 0xfe, 0xd3,                          // payload_crc
    0x10, 0x53, 0x31, 0x4b,                          // header_crc
    0x01, 0x00,                                      // 0  version 1
    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // 2  session_id 0x1122334455667788
    0x01,                                            // 10 mode 1 Full
    0x07,                                            // 11 accept_frames raw | PNG | JPEG
    0x08, 0x00, 0x00, 0x00,                          // 12 min_stride 8
    0x40, 0x00, 0x00, 0x00,                          // 16 max_stride 64
    0xcd, 0xcc, 0x4c, 0x3f,                          // 20 threshold 0.8f (0x3f4ccccd)
    0x01,                                            // 24 scope 1 full student
    0x01,                                            // 25 blob_kind 1 fp32
    0x03, 0x00, 0x00, 0x00, 0xaa, 0xbb, 0xcc,        // 26 blob, 3 bytes
};

// WELCOME: mode Partial, raw frames only, both strides 2^20, threshold 0, scope trained part,
// no blob: the minimum payload of 30 bytes.
const Bytes kWelcomeB = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x02, 0x00,                                      // type 2 WELCOME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x1e, 0x00, 0x00, 0x00,                          // payload_size 30
    0xbf, 0x41, 0x83, 0x4b,                          // payload_crc
    0xd5, 0x29, 0xc3, 0x8a,                          // header_crc
    0x01, 0x00,                                      // 0  version 1
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 2  session_id 0
    0x00,                                            // 10 mode 0 Partial
    0x01,                                            // 11 accept_frames raw
    0x00, 0x00, 0x10, 0x00,                          // 12 min_stride 2^20
    0x00, 0x00, 0x10, 0x00,                          // 16 max_stride 2^20
    0x00, 0x00, 0x00, 0x00,                          // 20 threshold 0.0f
    0x00,                                            // 24 scope 0 trained part
    0x00,                                            // 25 blob_kind 0 none
    0x00, 0x00, 0x00, 0x00,                          // 26 blob, empty
};

// WELCOME: mode Naive, raw | PNG, both strides 1, threshold 1, an fp16 blob of 2 bytes.
const Bytes kWelcomeC = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x02, 0x00,                                      // type 2 WELCOME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x20, 0x00, 0x00, 0x00,                          // payload_size 32
    0x6a, 0x88, 0x9d, 0xe7,                          // payload_crc
    0xf3, 0xc7, 0xaa, 0xb1,                          // header_crc
    0x01, 0x00,                                      // 0  version 1
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // 2  session_id 2^64 - 1
    0x02,                                            // 10 mode 2 Naive
    0x03,                                            // 11 accept_frames raw | PNG
    0x01, 0x00, 0x00, 0x00,                          // 12 min_stride 1
    0x01, 0x00, 0x00, 0x00,                          // 16 max_stride 1
    0x00, 0x00, 0x80, 0x3f,                          // 20 threshold 1.0f
    0x00,                                            // 24 scope 0 trained part
    0x02,                                            // 25 blob_kind 2 fp16
    0x02, 0x00, 0x00, 0x00, 0x3c, 0x00,              // 26 blob, 2 bytes
};

// WELCOME, version 2: mode Partial, raw | JPEG, strides 4..32, threshold 0.5, the trained part
// as an fp16 blob of 2 bytes, and the split: training from block 4 (enc3), biases and BN affine
// only.
const Bytes kWelcomeSplit = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x02, 0x00,                                      // version 2
    0x02, 0x00,                                      // type 2 WELCOME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x22, 0x00, 0x00, 0x00,                          // payload_size 34 = 32 + 2
    0x2e, 0x28, 0xa4, 0x77,                          // payload_crc
    0xc6, 0x5b, 0x59, 0x0e,                          // header_crc
    0x02, 0x00,                                      // 0  version 2
    0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 2  session_id 5
    0x00,                                            // 10 mode 0 Partial
    0x05,                                            // 11 accept_frames raw | JPEG
    0x04, 0x00, 0x00, 0x00,                          // 12 min_stride 4
    0x20, 0x00, 0x00, 0x00,                          // 16 max_stride 32
    0x00, 0x00, 0x00, 0x3f,                          // 20 threshold 0.5f
    0x00,                                            // 24 scope 0 trained part
    0x02,                                            // 25 blob_kind 2 fp16
    0x04,                                            // 26 train_from 4 (enc3)
    0x01,                                            // 27 train 1 biases and BN affine only
    0x02, 0x00, 0x00, 0x00, 0x00, 0x3c,              // 28 blob, 2 bytes
};

// WELCOME, version 2: mode Full (no split: train_from 0, train 0), raw only, strides 8..64,
// threshold 0.8, scope full student, no blob: the minimum version-2 payload of 32 bytes.
const Bytes kWelcomeFullV2 = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x02, 0x00,                                      // version 2
    0x02, 0x00,                                      // type 2 WELCOME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x20, 0x00, 0x00, 0x00,                          // payload_size 32
    0x91, 0xdb, 0xad, 0xb7,                          // payload_crc
    0x51, 0xda, 0x35, 0x65,                          // header_crc
    0x02, 0x00,                                      // 0  version 2
    0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 2  session_id 9
    0x01,                                            // 10 mode 1 Full
    0x01,                                            // 11 accept_frames raw
    0x08, 0x00, 0x00, 0x00,                          // 12 min_stride 8
    0x40, 0x00, 0x00, 0x00,                          // 16 max_stride 64
    0xcd, 0xcc, 0x4c, 0x3f,                          // 20 threshold 0.8f
    0x01,                                            // 24 scope 1 full student
    0x00,                                            // 25 blob_kind 0 none
    0x00,                                            // 26 train_from 0 (no split)
    0x00,                                            // 27 train 0
    0x00, 0x00, 0x00, 0x00,                          // 28 blob, empty
};

// WELCOME (version 3): Partial at the paper's split, every frame encoding, strides 8..64, 0.8,
// scope 2 Wanted (the server asks for the edge's weights), no blob.
const Bytes kWelcomeWantedV3 = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x03, 0x00,                                      // version 3
    0x02, 0x00,                                      // type 2 WELCOME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x20, 0x00, 0x00, 0x00,                          // payload_size 32
    0x70, 0xbc, 0x48, 0x09,                          // payload_crc
    0x2a, 0xc4, 0xd7, 0x46,                          // header_crc
    0x03, 0x00,                                      // 0  version 3
    0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 2  session_id 12
    0x00,                                            // 10 mode 0 Partial
    0x07,                                            // 11 accept_frames raw | PNG | JPEG
    0x08, 0x00, 0x00, 0x00,                          // 12 min_stride 8
    0x40, 0x00, 0x00, 0x00,                          // 16 max_stride 64
    0xcd, 0xcc, 0x4c, 0x3f,                          // 20 threshold 0.8f
    0x02,                                            // 24 scope 2 Wanted
    0x00,                                            // 25 blob_kind 0 none
    0x06,                                            // 26 train_from 6 (dec2)
    0x00,                                            // 27 train 0 all
    0x00, 0x00, 0x00, 0x00,                          // 28 blob, empty
};

// KEY_FRAME, raw BGR 2 wide and 1 high: exactly 2*1*3 = 6 bytes of data.
const Bytes kKeyFrameRaw = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x03, 0x00,                                      // type 3 KEY_FRAME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x1b, 0x00, 0x00, 0x00,                          // payload_size 27 = 21 + 6
    0xeb, 0x77, 0x6e, 0x9b,                          // payload_crc
    0xcc, 0x93, 0xf0, 0xaf,                          // header_crc
    0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 0  frame_index 7
    0x00,                                            // 8  encoding 0 raw BGR
    0x02, 0x00, 0x00, 0x00,                          // 9  width 2
    0x01, 0x00, 0x00, 0x00,                          // 13 height 1
    0x06, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5, 6,        // 17 data, 6 bytes
};

// KEY_FRAME, PNG (the data is opaque to the protocol), the last frame index, width 16384.
const Bytes kKeyFramePng = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x03, 0x00,                                      // type 3 KEY_FRAME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x19, 0x00, 0x00, 0x00,                          // payload_size 25
    0x31, 0x7c, 0xdd, 0x24,                          // payload_crc
    0xb8, 0xfe, 0xda, 0xd5,                          // header_crc
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // 0  frame_index 2^64 - 1
    0x01,                                            // 8  encoding 1 PNG
    0x00, 0x40, 0x00, 0x00,                          // 9  width 16384
    0x03, 0x00, 0x00, 0x00,                          // 13 height 3
    0x04, 0x00, 0x00, 0x00, 0x89, 'P', 'N', 'G',     // 17 data, 4 bytes
};

// KEY_FRAME, JPEG 5 x 7, frame 0: the minimum payload is 22 (one data byte); this has 3.
const Bytes kKeyFrameJpeg = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x03, 0x00,                                      // type 3 KEY_FRAME
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x18, 0x00, 0x00, 0x00,                          // payload_size 24
    0x26, 0xa1, 0x4f, 0x51,                          // payload_crc
    0x5e, 0x73, 0x86, 0xf4,                          // header_crc
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 0  frame_index 0
    0x02,                                            // 8  encoding 2 JPEG
    0x05, 0x00, 0x00, 0x00,                          // 9  width 5
    0x07, 0x00, 0x00, 0x00,                          // 13 height 7
    0x03, 0x00, 0x00, 0x00, 0xff, 0xd8, 0xff,        // 17 data, 3 bytes
};

// UPDATE "no change": the minimum payload of 25 bytes.
const Bytes kUpdateNone = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x04, 0x00,                                      // type 4 UPDATE
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x19, 0x00, 0x00, 0x00,                          // payload_size 25
    0xf7, 0xc4, 0xbd, 0x95,                          // payload_crc
    0x3b, 0x9e, 0x6e, 0x9b,                          // header_crc
    0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 0  key_frame 40
    0x10, 0x00, 0x00, 0x00,                          // 8  next_stride 16
    0x00, 0x00, 0x40, 0x3f,                          // 12 accuracy 0.75f
    0x03, 0x00, 0x00, 0x00,                          // 16 steps 3
    0x00,                                            // 20 blob_kind 0 no change
    0x00, 0x00, 0x00, 0x00,                          // 21 blob, empty
};

// UPDATE with an fp32 blob, the largest stride and step count, accuracy 1.
const Bytes kUpdateF32 = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x04, 0x00,                                      // type 4 UPDATE
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x1d, 0x00, 0x00, 0x00,                          // payload_size 29
    0xe2, 0xb7, 0x7f, 0x88,                          // payload_crc
    0xbb, 0x77, 0x3a, 0xc5,                          // header_crc
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,  // 0  key_frame 0x8877665544332211
    0x00, 0x00, 0x10, 0x00,                          // 8  next_stride 2^20
    0x00, 0x00, 0x80, 0x3f,                          // 12 accuracy 1.0f
    0x00, 0x00, 0x01, 0x00,                          // 16 steps 65536
    0x01,                                            // 20 blob_kind 1 fp32
    0x04, 0x00, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef,  // 21 blob, 4 bytes
};

// UPDATE with an fp16 blob, stride 1, accuracy 0, training skipped.
const Bytes kUpdateF16 = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x04, 0x00,                                      // type 4 UPDATE
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x1a, 0x00, 0x00, 0x00,                          // payload_size 26
    0x36, 0x62, 0x0b, 0x2b,                          // payload_crc
    0xd4, 0x2b, 0x94, 0x13,                          // header_crc
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 0  key_frame 1
    0x01, 0x00, 0x00, 0x00,                          // 8  next_stride 1
    0x00, 0x00, 0x00, 0x00,                          // 12 accuracy 0.0f
    0x00, 0x00, 0x00, 0x00,                          // 16 steps 0
    0x02,                                            // 20 blob_kind 2 fp16
    0x01, 0x00, 0x00, 0x00, 0x5a,                    // 21 blob, 1 byte
};

// LABELS 3 wide, 2 high (width != height, so a swap shows), row-major 0..5.
const Bytes kLabels = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x05, 0x00,                                      // type 5 LABELS
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x1a, 0x00, 0x00, 0x00,                          // payload_size 26 = 20 + 6
    0xf6, 0xec, 0x39, 0x54,                          // payload_crc
    0x6d, 0xa6, 0xc0, 0x9c,                          // header_crc
    0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 0  frame_index 5
    0x03, 0x00, 0x00, 0x00,                          // 8  width 3
    0x02, 0x00, 0x00, 0x00,                          // 12 height 2
    0x06, 0x00, 0x00, 0x00, 0, 1, 2, 3, 4, 5,        // 16 labels, 6 bytes
};

// LABELS 16384 wide, 1 high: the largest width.
const Bytes kLabelsWide = cat({
    {
        0x53, 0x54, 0x57, 0x31,                          // magic
        0x01, 0x00,                                      // version 1
        0x05, 0x00,                                      // type 5 LABELS
        0x00, 0x00, 0x00, 0x00,                          // flags
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
        0x14, 0x40, 0x00, 0x00,                          // payload_size 16404 = 20 + 16384
        0x76, 0xd6, 0x97, 0x17,                          // payload_crc
        0xbe, 0x9b, 0xe9, 0x81,                          // header_crc
        0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 0  frame_index 9
        0x00, 0x40, 0x00, 0x00,                          // 8  width 16384
        0x01, 0x00, 0x00, 0x00,                          // 12 height 1
        0x00, 0x40, 0x00, 0x00,                          // 16 labels: length 16384
    },
    fill(16384, 7),  //                                     20 ... class 7 everywhere
});

// ERROR AuthFailed "bad token".
const Bytes kErrorAuth = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x06, 0x00,                                      // type 6 ERROR
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x0d, 0x00, 0x00, 0x00,                          // payload_size 13
    0x63, 0xa8, 0xb7, 0x5a,                          // payload_crc
    0xdf, 0x89, 0xa9, 0xe1,                          // header_crc
    0x20, 0x00,                                      // 0  code 32 AuthFailed
    0x09, 0x00,                                      // 2  text: length 9
    'b', 'a', 'd', ' ', 't', 'o', 'k', 'e', 'n',     // 4  "bad token"
};

// ERROR with a code this version does not know (a newer peer's: accepted), empty text: the
// minimum payload of 4 bytes.
const Bytes kErrorUnknown = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x06, 0x00,                                      // type 6 ERROR
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x04, 0x00, 0x00, 0x00,                          // payload_size 4
    0x2d, 0x88, 0x61, 0xf1,                          // payload_crc
    0x96, 0xa7, 0x51, 0xfb,                          // header_crc
    0xff, 0xff,                                      // 0  code 65535
    0x00, 0x00,                                      // 2  text ""
};

// ERROR Overflow with the longest text, 4096 bytes: the maximum payload of 4100.
const Bytes kErrorMax = cat({
    {
        0x53, 0x54, 0x57, 0x31,                          // magic
        0x01, 0x00,                                      // version 1
        0x06, 0x00,                                      // type 6 ERROR
        0x00, 0x00, 0x00, 0x00,                          // flags
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
        0x04, 0x10, 0x00, 0x00,                          // payload_size 4100
        0x33, 0x79, 0x01, 0x79,                          // payload_crc
        0x52, 0x38, 0x39, 0x4c,                          // header_crc
        0x28, 0x00,                                      // 0  code 40 Overflow
        0x00, 0x10,                                      // 2  text: length 4096
    },
    fill(4096, 'x'),  //                                    4 ... 4096 x 'x'
});

// ERROR under header version 7 (§5: ERROR is read under any version >= 1, so an old peer reads
// a newer one's refusal), UnsupportedVersion "v=7".
const Bytes kErrorV7 = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x07, 0x00,                                      // version 7
    0x06, 0x00,                                      // type 6 ERROR
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x07, 0x00, 0x00, 0x00,                          // payload_size 7
    0x93, 0x76, 0x62, 0xc0,                          // payload_crc
    0x28, 0xf2, 0x4a, 0x2f,                          // header_crc
    0x02, 0x00,                                      // 0  code 2 UnsupportedVersion
    0x03, 0x00, 'v', '=', '7',                       // 2  text "v=7"
};

// PING with a nonce whose 8 bytes all differ.
const Bytes kPing = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x07, 0x00,                                      // type 7 PING
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x08, 0x00, 0x00, 0x00,                          // payload_size 8
    0x1c, 0x02, 0xf9, 0x26,                          // payload_crc
    0x90, 0x96, 0x74, 0x85,                          // header_crc
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // 0  nonce 0x0102030405060708
};

// PING with nonce 0.
const Bytes kPingZero = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x07, 0x00,                                      // type 7 PING
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x08, 0x00, 0x00, 0x00,                          // payload_size 8
    0x8a, 0xb2, 0x28, 0x8c,                          // payload_crc
    0xa8, 0xc5, 0x2e, 0x01,                          // header_crc
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 0  nonce 0
};

// PONG, late in a stream (seq 0x1122334455667788: its 8 bytes all differ), nonce 2^64 - 1.
const Bytes kPong = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x08, 0x00,                                      // type 8 PONG
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // seq 0x1122334455667788
    0x08, 0x00, 0x00, 0x00,                          // payload_size 8
    0xc7, 0x4b, 0x67, 0x48,                          // payload_crc
    0x2e, 0x50, 0x15, 0xf2,                          // header_crc
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // 0  nonce 2^64 - 1
};

// BYE: no payload, payload_crc 0 (§2: 0 for an empty payload).
const Bytes kBye = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x01, 0x00,                                      // version 1
    0x09, 0x00,                                      // type 9 BYE
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x00, 0x00, 0x00, 0x00,                          // payload_size 0
    0x00, 0x00, 0x00, 0x00,                          // payload_crc 0
    0xe3, 0xb6, 0xf5, 0x06,                          // header_crc
};

// RESYNC (version 2): the edge holds weights hashing to 0x0102030405060708.
const Bytes kResync = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x02, 0x00,                                      // version 2
    0x0a, 0x00,                                      // type 10 RESYNC
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x08, 0x00, 0x00, 0x00,                          // payload_size 8
    0x1c, 0x02, 0xf9, 0x26,                          // payload_crc
    0x24, 0x1d, 0x91, 0x8c,                          // header_crc
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // 0 weights_hash
};

// WEIGHTS (version 2): an fp16 student blob of 3 (opaque) bytes.
const Bytes kWeights = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x02, 0x00,                                      // version 2
    0x0b, 0x00,                                      // type 11 WEIGHTS
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x08, 0x00, 0x00, 0x00,                          // payload_size 8
    0x4c, 0xb7, 0xb8, 0x27,                          // payload_crc
    0x83, 0x07, 0xc6, 0xad,                          // header_crc
    0x02,                                            // 0 blob_kind 2 fp16
    0x03, 0x00, 0x00, 0x00, 0xaa, 0xbb, 0xcc,        // 1 blob, 3 bytes
};

// WEIGHTS (version 3) from the edge, its second message (seq 1): an fp32 student blob of 4
// (opaque) bytes.
const Bytes kWeightsFromEdgeV3 = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x03, 0x00,                                      // version 3
    0x0b, 0x00,                                      // type 11 WEIGHTS
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 1
    0x09, 0x00, 0x00, 0x00,                          // payload_size 9
    0xea, 0xb3, 0xf5, 0xfb,                          // payload_crc
    0x64, 0x0c, 0x1c, 0xd2,                          // header_crc
    0x01,                                            // 0 blob_kind 1 fp32
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f,  // 1 blob, 4 bytes
};

// UPDATE (version 2) with an update blob: key frame 16, next stride 8, accuracy 0.5, 2 steps,
// blob_kind 3, 2 (opaque) bytes.
const Bytes kUpdateBlob = {
    0x53, 0x54, 0x57, 0x31,                          // magic
    0x02, 0x00,                                      // version 2
    0x04, 0x00,                                      // type 4 UPDATE
    0x00, 0x00, 0x00, 0x00,                          // flags
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 0
    0x1b, 0x00, 0x00, 0x00,                          // payload_size 27
    0xa3, 0x9e, 0xd6, 0xd5,                          // payload_crc
    0x3f, 0x48, 0x27, 0x53,                          // header_crc
    0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 0  key_frame 16
    0x08, 0x00, 0x00, 0x00,                          // 8  next_stride 8
    0x00, 0x00, 0x00, 0x3f,                          // 12 accuracy 0.5f
    0x02, 0x00, 0x00, 0x00,                          // 16 steps 2
    0x03,                                            // 20 blob_kind 3 update blob
    0x02, 0x00, 0x00, 0x00, 0x53, 0x54,              // 21 blob, 2 bytes
};

uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

}  // namespace

TEST_CASE("protocol semantics: the goldens' CRC fields are CRC32C of what they cover",
          "[protocol][portable]") {
  // A check of the goldens themselves (their CRCs came from the Python CRC32C), so a typo in a
  // golden shows here rather than as a puzzling BadHeaderCrc below.
  for (const Bytes* g : {&kHelloA, &kHelloB, &kHelloMax, &kWelcomeA, &kWelcomeB, &kWelcomeC,
                         &kWelcomeSplit, &kWelcomeFullV2, &kKeyFrameRaw, &kKeyFramePng, &kKeyFrameJpeg, &kUpdateNone, &kUpdateF32,
                         &kUpdateF16, &kLabels, &kLabelsWide, &kErrorAuth, &kErrorUnknown,
                         &kErrorMax, &kErrorV7, &kPing, &kPingZero, &kPong, &kBye, &kResync,
                         &kWeights, &kUpdateBlob, &kWelcomeWantedV3, &kWeightsFromEdgeV3}) {
    REQUIRE(g->size() >= kHeaderSize);
    auto le32 = [&](size_t o) {
      return uint32_t((*g)[o]) | uint32_t((*g)[o + 1]) << 8 | uint32_t((*g)[o + 2]) << 16 |
             uint32_t((*g)[o + 3]) << 24;
    };
    const size_t payload = g->size() - kHeaderSize;
    CHECK(le32(20) == payload);
    CHECK(le32(24) == (payload ? crc32c(g->data() + kHeaderSize, payload) : 0u));
    CHECK(le32(28) == crc32c(g->data(), 28));
  }
}

TEST_CASE("protocol semantics: HELLO golden bytes", "[protocol][portable]") {
  SECTION("versions 1..3, Partial, fp32 | fp16, token with a NUL") {
    Message m = decode_one(kHelloA);
    CHECK(m.seq == 0);
    CHECK(m.version == 1);
    const Hello& h = m.as<Hello>();
    CHECK(h.min_version == 1);
    CHECK(h.max_version == 3);
    CHECK(h.mode == st::Mode::Partial);
    CHECK(h.accept_blobs == (kAcceptF32 | kAcceptF16));
    CHECK(h.layout_hash == 0x0123456789abcdefull);
    CHECK(h.weights_hash == 0xf0e1d2c3b4a59687ull);
    CHECK(h.frame_width == 1280);
    CHECK(h.frame_height == 720);
    CHECK(h.auth_token == std::string("ab\0c", 4));
    CHECK(h.edge_name == "e1");
    Hello want;
    want.min_version = 1;
    want.max_version = 3;
    want.mode = st::Mode::Partial;
    want.accept_blobs = 3;
    want.layout_hash = 0x0123456789abcdefull;
    want.weights_hash = 0xf0e1d2c3b4a59687ull;
    want.frame_width = 1280;
    want.frame_height = 720;
    want.auth_token = std::string("ab\0c", 4);
    want.edge_name = "e1";
    check_encodes(kHelloA, 0, 1, want);
  }
  SECTION("header version 2, Full, fp32, 1 x 16384, empty strings") {
    Message m = decode_one(kHelloB);
    CHECK(m.version == 2);
    const Hello& h = m.as<Hello>();
    CHECK(h.min_version == 2);
    CHECK(h.max_version == 65535);
    CHECK(h.mode == st::Mode::Full);
    CHECK(h.accept_blobs == kAcceptF32);
    CHECK(h.layout_hash == 0);
    CHECK(h.weights_hash == ~0ull);
    CHECK(h.frame_width == 1);
    CHECK(h.frame_height == 16384);
    CHECK(h.auth_token.empty());
    CHECK(h.edge_name.empty());
    Hello want;
    want.min_version = 2;
    want.max_version = 65535;
    want.mode = st::Mode::Full;
    want.accept_blobs = 1;
    want.layout_hash = 0;
    want.weights_hash = ~0ull;
    want.frame_width = 1;
    want.frame_height = 16384;
    check_encodes(kHelloB, 0, 2, want);
  }
  SECTION("the largest: Naive, fp16, 1024-byte token, 256-byte name") {
    REQUIRE(kHelloMax.size() == 32 + 1314);
    CHECK(kHelloMax.size() == 1346);  // §8
    Message m = decode_one(kHelloMax);
    const Hello& h = m.as<Hello>();
    CHECK(h.min_version == 1);
    CHECK(h.max_version == 1);
    CHECK(h.mode == st::Mode::Naive);
    CHECK(h.accept_blobs == kAcceptF16);
    CHECK(h.layout_hash == 1);
    CHECK(h.weights_hash == 2);
    CHECK(h.frame_width == 16384);
    CHECK(h.frame_height == 1);
    CHECK(h.auth_token == std::string(1024, 't'));
    CHECK(h.edge_name == std::string(256, 'n'));
    Hello want;
    want.min_version = 1;
    want.max_version = 1;
    want.mode = st::Mode::Naive;
    want.accept_blobs = 2;
    want.layout_hash = 1;
    want.weights_hash = 2;
    want.frame_width = 16384;
    want.frame_height = 1;
    want.auth_token = std::string(1024, 't');
    want.edge_name = std::string(256, 'n');
    check_encodes(kHelloMax, 0, 1, want);
  }
}

TEST_CASE("protocol semantics: WELCOME golden bytes", "[protocol][portable]") {
  SECTION("Full, all frame encodings, strides 8..64, 0.8, full student fp32") {
    const Message got = decode_one(kWelcomeA);
    const Welcome& w = got.as<Welcome>();
    CHECK(w.version == 1);
    CHECK(w.session_id == 0x1122334455667788ull);
    CHECK(w.mode == st::Mode::Full);
    CHECK(w.accept_frames == (kAcceptRawBgr | kAcceptPng | kAcceptJpeg));
    CHECK(w.min_stride == 8);
    CHECK(w.max_stride == 64);
    CHECK(f32_bits(w.threshold) == 0x3f4ccccdu);
    CHECK(w.scope == WeightsScope::Full);
    CHECK(w.blob_kind == st::BlobEncoding::F32);
    CHECK(w.blob == Bytes{0xaa, 0xbb, 0xcc});
    Welcome want;
    want.version = 1;
    want.session_id = 0x1122334455667788ull;
    want.mode = st::Mode::Full;
    want.accept_frames = 7;
    want.min_stride = 8;
    want.max_stride = 64;
    want.threshold = 0.8f;
    want.scope = WeightsScope::Full;
    want.blob_kind = st::BlobEncoding::F32;
    want.train_from = 0;  // what version 1 means in mode Full: no split
    want.blob = {0xaa, 0xbb, 0xcc};
    CHECK(w == want);
    check_encodes(kWelcomeA, 0, 1, want);
  }
  SECTION("Partial, raw only, strides 2^20, 0, trained part, no blob") {
    const Message got = decode_one(kWelcomeB);
    const Welcome& w = got.as<Welcome>();
    CHECK(w.version == 1);
    CHECK(w.session_id == 0);
    CHECK(w.mode == st::Mode::Partial);
    CHECK(w.accept_frames == kAcceptRawBgr);
    CHECK(w.min_stride == kMaxStride);
    CHECK(w.max_stride == (1u << 20));
    CHECK(f32_bits(w.threshold) == 0u);
    CHECK(w.scope == WeightsScope::Trained);
    CHECK(w.blob_kind == st::BlobEncoding::None);
    CHECK(w.blob.empty());
    Welcome want;
    want.version = 1;
    want.session_id = 0;
    want.mode = st::Mode::Partial;
    want.accept_frames = 1;
    want.min_stride = 1u << 20;
    want.max_stride = 1u << 20;
    want.threshold = 0.f;
    want.scope = WeightsScope::Trained;
    want.blob_kind = st::BlobEncoding::None;
    CHECK(w.train_from == kPaperTrainFrom);  // version 1 in mode Partial: the paper's split
    CHECK(w.train == TrainedTensors::All);
    CHECK(w == want);
    check_encodes(kWelcomeB, 0, 1, want);
  }
  SECTION("Naive, raw | PNG, strides 1, 1.0, fp16") {
    const Message got = decode_one(kWelcomeC);
    const Welcome& w = got.as<Welcome>();
    CHECK(w.session_id == ~0ull);
    CHECK(w.mode == st::Mode::Naive);
    CHECK(w.accept_frames == (kAcceptRawBgr | kAcceptPng));
    CHECK(w.min_stride == 1);
    CHECK(w.max_stride == 1);
    CHECK(w.threshold == 1.0f);
    CHECK(w.scope == WeightsScope::Trained);
    CHECK(w.blob_kind == st::BlobEncoding::F16);
    CHECK(w.blob == Bytes{0x3c, 0x00});
    Welcome want;
    want.version = 1;
    want.session_id = ~0ull;
    want.mode = st::Mode::Naive;
    want.accept_frames = 3;
    want.min_stride = 1;
    want.max_stride = 1;
    want.threshold = 1.f;
    want.scope = WeightsScope::Trained;
    want.blob_kind = st::BlobEncoding::F16;
    want.train_from = 0;
    want.blob = {0x3c, 0x00};
    CHECK(w == want);
    check_encodes(kWelcomeC, 0, 1, want);
  }
  SECTION("version 2: Partial, split at enc3, biases and BN affine only, fp16") {
    const Message got = decode_one(kWelcomeSplit);
    const Welcome& w = got.as<Welcome>();
    CHECK(got.version == 2);
    CHECK(w.version == 2);
    CHECK(w.session_id == 5);
    CHECK(w.mode == st::Mode::Partial);
    CHECK(w.accept_frames == (kAcceptRawBgr | kAcceptJpeg));
    CHECK(w.min_stride == 4);
    CHECK(w.max_stride == 32);
    CHECK(w.threshold == 0.5f);
    CHECK(w.scope == WeightsScope::Trained);
    CHECK(w.blob_kind == st::BlobEncoding::F16);
    CHECK(w.train_from == 4);
    CHECK(w.train == TrainedTensors::BiasOnly);
    CHECK(w.blob == Bytes{0x00, 0x3c});
    Welcome want;
    want.version = 2;
    want.session_id = 5;
    want.mode = st::Mode::Partial;
    want.accept_frames = 5;
    want.min_stride = 4;
    want.max_stride = 32;
    want.threshold = 0.5f;
    want.scope = WeightsScope::Trained;
    want.blob_kind = st::BlobEncoding::F16;
    want.train_from = 4;
    want.train = TrainedTensors::BiasOnly;
    want.blob = {0x00, 0x3c};
    CHECK(w == want);
    check_encodes(kWelcomeSplit, 0, 2, want);
    // Version 1 cannot say this: the encoder refuses rather than send the paper's split.
    Welcome v1 = want;
    v1.version = 1;
    CHECK_THROWS_WITH(encode_payload(v1), Catch::Contains("version 2"));
  }
  SECTION("version 2: Full, no split, no blob") {
    const Message got = decode_one(kWelcomeFullV2);
    const Welcome& w = got.as<Welcome>();
    CHECK(w.version == 2);
    CHECK(w.session_id == 9);
    CHECK(w.mode == st::Mode::Full);
    CHECK(w.scope == WeightsScope::Full);
    CHECK(w.blob_kind == st::BlobEncoding::None);
    CHECK(w.train_from == 0);
    CHECK(w.train == TrainedTensors::All);
    CHECK(w.blob.empty());
    Welcome want;
    want.version = 2;
    want.session_id = 9;
    want.mode = st::Mode::Full;
    want.scope = WeightsScope::Full;
    want.train_from = 0;
    CHECK(w == want);
    check_encodes(kWelcomeFullV2, 0, 2, want);
  }
}

TEST_CASE("protocol semantics: KEY_FRAME golden bytes", "[protocol][portable]") {
  SECTION("raw BGR 2 x 1") {
    const Message got = decode_one(kKeyFrameRaw);
    const KeyFrame& k = got.as<KeyFrame>();
    CHECK(k.frame_index == 7);
    CHECK(k.encoding == FrameEncoding::RawBgr);
    CHECK(k.width == 2);
    CHECK(k.height == 1);
    CHECK(k.data == Bytes{1, 2, 3, 4, 5, 6});
    check_encodes(kKeyFrameRaw, 0, 1, KeyFrame{7, FrameEncoding::RawBgr, 2, 1, {1, 2, 3, 4, 5, 6}});
  }
  SECTION("PNG 16384 x 3, the last frame index") {
    const Message got = decode_one(kKeyFramePng);
    const KeyFrame& k = got.as<KeyFrame>();
    CHECK(k.frame_index == ~0ull);
    CHECK(k.encoding == FrameEncoding::Png);
    CHECK(k.width == 16384);
    CHECK(k.height == 3);
    CHECK(k.data == Bytes{0x89, 'P', 'N', 'G'});
    check_encodes(kKeyFramePng, 0, 1,
                  KeyFrame{~0ull, FrameEncoding::Png, 16384, 3, {0x89, 'P', 'N', 'G'}});
  }
  SECTION("JPEG 5 x 7, frame 0") {
    const Message got = decode_one(kKeyFrameJpeg);
    const KeyFrame& k = got.as<KeyFrame>();
    CHECK(k.frame_index == 0);
    CHECK(k.encoding == FrameEncoding::Jpeg);
    CHECK(k.width == 5);
    CHECK(k.height == 7);
    CHECK(k.data == Bytes{0xff, 0xd8, 0xff});
    check_encodes(kKeyFrameJpeg, 0, 1, KeyFrame{0, FrameEncoding::Jpeg, 5, 7, {0xff, 0xd8, 0xff}});
  }
  SECTION("§3: a 1280 x 720 raw frame is 2,764,853 bytes on the wire") {
    KeyFrame k{0, FrameEncoding::RawBgr, 1280, 720, Bytes(size_t(1280) * 720 * 3, 0)};
    CHECK(k.data.size() == 2764800);
    CHECK(encode(Message{0, 1, k}).size() == 2764853);
  }
}

TEST_CASE("protocol semantics: UPDATE golden bytes", "[protocol][portable]") {
  SECTION("no change") {
    const Message got = decode_one(kUpdateNone);
    const Update& u = got.as<Update>();
    CHECK(u.key_frame == 40);
    CHECK(u.next_stride == 16);
    CHECK(f32_bits(u.accuracy) == 0x3f400000u);
    CHECK(u.steps == 3);
    CHECK(u.blob_kind == st::BlobEncoding::None);
    CHECK(u.blob.empty());
    check_encodes(kUpdateNone, 0, 1, Update{40, 16, 0.75f, 3, st::BlobEncoding::None, {}});
  }
  SECTION("fp32, stride 2^20, 65536 steps, accuracy 1") {
    const Message got = decode_one(kUpdateF32);
    const Update& u = got.as<Update>();
    CHECK(u.key_frame == 0x8877665544332211ull);
    CHECK(u.next_stride == (1u << 20));
    CHECK(u.accuracy == 1.0f);
    CHECK(u.steps == 65536);
    CHECK(u.blob_kind == st::BlobEncoding::F32);
    CHECK(u.blob == Bytes{0xde, 0xad, 0xbe, 0xef});
    check_encodes(kUpdateF32, 0, 1,
                  Update{0x8877665544332211ull, 1u << 20, 1.f, 65536, st::BlobEncoding::F32,
                         {0xde, 0xad, 0xbe, 0xef}});
  }
  SECTION("fp16, stride 1, accuracy 0, no steps") {
    const Message got = decode_one(kUpdateF16);
    const Update& u = got.as<Update>();
    CHECK(u.key_frame == 1);
    CHECK(u.next_stride == 1);
    CHECK(f32_bits(u.accuracy) == 0u);
    CHECK(u.steps == 0);
    CHECK(u.blob_kind == st::BlobEncoding::F16);
    CHECK(u.blob == Bytes{0x5a});
    check_encodes(kUpdateF16, 0, 1, Update{1, 1, 0.f, 0, st::BlobEncoding::F16, {0x5a}});
  }
}

TEST_CASE("protocol semantics: LABELS golden bytes", "[protocol][portable]") {
  SECTION("3 wide, 2 high") {
    const Message got = decode_one(kLabels);
    const Labels& l = got.as<Labels>();
    CHECK(l.frame_index == 5);
    CHECK(l.width == 3);
    CHECK(l.height == 2);
    CHECK(l.labels == Bytes{0, 1, 2, 3, 4, 5});
    check_encodes(kLabels, 0, 1, Labels{5, 3, 2, {0, 1, 2, 3, 4, 5}});
  }
  SECTION("16384 wide, 1 high") {
    const Message got = decode_one(kLabelsWide);
    const Labels& l = got.as<Labels>();
    CHECK(l.frame_index == 9);
    CHECK(l.width == 16384);
    CHECK(l.height == 1);
    CHECK(l.labels == fill(16384, 7));
    check_encodes(kLabelsWide, 0, 1, Labels{9, 16384, 1, fill(16384, 7)});
  }
}

TEST_CASE("protocol semantics: version 2's RESYNC, WEIGHTS and update blobs, golden bytes",
          "[protocol][portable]") {
  SECTION("RESYNC") {
    const Message m = decode_one(kResync);
    CHECK(m.version == 2);
    CHECK(m.as<Resync>().weights_hash == 0x0102030405060708ull);
    check_encodes(kResync, 0, 2, Resync{0x0102030405060708ull});
  }
  SECTION("WEIGHTS") {
    const Message m = decode_one(kWeights);
    CHECK(m.as<Weights>().blob_kind == st::BlobEncoding::F16);
    CHECK(m.as<Weights>().blob == Bytes{0xaa, 0xbb, 0xcc});
    check_encodes(kWeights, 0, 2, Weights{st::BlobEncoding::F16, {0xaa, 0xbb, 0xcc}});
  }
  SECTION("UPDATE with an update blob") {
    const Message m = decode_one(kUpdateBlob);
    const Update& u = m.as<Update>();
    CHECK(u.key_frame == 16);
    CHECK(u.next_stride == 8);
    CHECK(u.accuracy == 0.5f);
    CHECK(u.steps == 2);
    CHECK(u.blob_kind == st::BlobEncoding::Update);
    CHECK(u.blob == Bytes{0x53, 0x54});
    check_encodes(kUpdateBlob, 0, 2, Update{16, 8, 0.5f, 2, st::BlobEncoding::Update, {0x53, 0x54}});
  }
  SECTION("types 10 and 11 do not exist in version 1") {
    for (const Bytes* g : {&kResync, &kWeights}) {
      Bytes v1 = *g;
      v1[4] = 1;
      const uint32_t hc = st::protocol::crc32c(v1.data(), 28);
      std::memcpy(v1.data() + 28, &hc, 4);
      Decoder d;
      Message m;
      try {  // the header alone decides it: feed() already refuses
        d.feed(v1);
        d.next(m);
        FAIL("type " << int(v1[6]) << " accepted under version 1");
      } catch (const ProtocolError& e) {
        CHECK(e.code() == ErrorCode::UnknownType);
      }
    }
  }
}

TEST_CASE("protocol semantics: version 3's session migration, golden bytes",
          "[protocol][portable]") {
  SECTION("WELCOME of scope 2 (Wanted)") {
    const Message m = decode_one(kWelcomeWantedV3);
    CHECK(m.version == 3);
    const Welcome& w = m.as<Welcome>();
    Welcome want;
    want.version = 3;
    want.session_id = 12;
    want.mode = st::Mode::Partial;
    want.accept_frames = 7;
    want.min_stride = 8;
    want.max_stride = 64;
    want.threshold = 0.8f;
    want.scope = WeightsScope::Wanted;
    want.blob_kind = st::BlobEncoding::None;
    want.train_from = 6;
    CHECK(w == want);
    check_encodes(kWelcomeWantedV3, 0, 3, want);
    // Under version 2 the same payload is refused: scope 2 does not exist there.
    Welcome v2 = want;
    v2.version = 2;
    CHECK_THROWS_WITH(encode_payload(v2), Catch::Contains("version 3"));
  }
  SECTION("WEIGHTS from the edge") {
    const Message m = decode_one(kWeightsFromEdgeV3, false);
    CHECK(m.seq == 1);
    CHECK(m.version == 3);
    CHECK(m.as<Weights>() == Weights{st::BlobEncoding::F32, {0x00, 0x00, 0x80, 0x3f}});
    check_encodes(kWeightsFromEdgeV3, 1, 3, Weights{st::BlobEncoding::F32, {0x00, 0x00, 0x80, 0x3f}});
  }
  SECTION("ERROR code 42 is WeightsMismatch") {
    CHECK(std::string(error_code_name(ErrorCode(42))) == "WeightsMismatch");
  }
}

TEST_CASE("protocol semantics: ERROR, PING, PONG and BYE golden bytes", "[protocol][portable]") {
  SECTION("ERROR AuthFailed") {
    const Message got = decode_one(kErrorAuth);
    const ErrorMessage& e = got.as<ErrorMessage>();
    CHECK(uint16_t(e.code) == 32);
    CHECK(e.code == ErrorCode::AuthFailed);
    CHECK(e.text == "bad token");
    check_encodes(kErrorAuth, 0, 1, ErrorMessage{ErrorCode::AuthFailed, "bad token"});
  }
  SECTION("ERROR with an unknown code and no text") {
    const Message got = decode_one(kErrorUnknown);
    const ErrorMessage& e = got.as<ErrorMessage>();
    CHECK(uint16_t(e.code) == 65535);
    CHECK(std::string(error_code_name(e.code)) == "Unknown");
    CHECK(e.text.empty());
    check_encodes(kErrorUnknown, 0, 1, ErrorMessage{ErrorCode(65535), ""});
  }
  SECTION("ERROR with the longest text") {
    // §8: the largest message a server takes before WELCOME (HELLO, BYE, ERROR) is this one.
    CHECK(kErrorMax.size() == 4132);
    CHECK(max_pre_welcome_message_size() == 4132);
    const Message got = decode_one(kErrorMax);
    const ErrorMessage& e = got.as<ErrorMessage>();
    CHECK(e.code == ErrorCode::Overflow);
    CHECK(e.text == std::string(4096, 'x'));
    check_encodes(kErrorMax, 0, 1, ErrorMessage{ErrorCode::Overflow, std::string(4096, 'x')});
  }
  SECTION("ERROR under header version 7") {
    Message m = decode_one(kErrorV7);
    CHECK(m.version == 7);
    CHECK(m.as<ErrorMessage>().code == ErrorCode::UnsupportedVersion);
    CHECK(m.as<ErrorMessage>().text == "v=7");
    check_encodes(kErrorV7, 0, 7, ErrorMessage{ErrorCode::UnsupportedVersion, "v=7"});
  }
  SECTION("PING") {
    CHECK(decode_one(kPing).as<Ping>().nonce == 0x0102030405060708ull);
    check_encodes(kPing, 0, 1, Ping{0x0102030405060708ull});
    CHECK(decode_one(kPingZero).as<Ping>().nonce == 0);
    check_encodes(kPingZero, 0, 1, Ping{0});
  }
  SECTION("PONG, seq 0x1122334455667788") {
    Message m = decode_one(kPong, /*check_seq=*/false);
    CHECK(m.seq == 0x1122334455667788ull);
    CHECK(m.as<Pong>().nonce == ~0ull);
    check_encodes(kPong, 0x1122334455667788ull, 1, Pong{~0ull});
  }
  SECTION("BYE") {
    Message m = decode_one(kBye);
    CHECK(m.is<Bye>());
    check_encodes(kBye, 0, 1, Bye{});
  }
}

TEST_CASE("protocol semantics: a field just outside its documented range is refused",
          "[protocol][portable]") {
  using MT = MessageType;
  const ErrorCode M = ErrorCode::Malformed, T = ErrorCode::Truncated;
  struct Case {
    const char* what;
    MT type;
    const Bytes* golden;
    size_t off;  // payload offset of the bytes replaced
    Bytes with;
    ErrorCode want;
  };
  const Case cases[] = {
      {"HELLO.min_version 0", MT::Hello, &kHelloA, 0, {0, 0}, M},
      {"HELLO.max_version < min_version", MT::Hello, &kHelloB, 2, {1, 0}, M},
      {"HELLO.mode 3 (Wild)", MT::Hello, &kHelloA, 4, {3}, M},
      {"HELLO.accept_blobs 0", MT::Hello, &kHelloA, 5, {0}, M},
      {"HELLO.accept_blobs 4", MT::Hello, &kHelloA, 5, {4}, M},
      {"HELLO.frame_width 0", MT::Hello, &kHelloA, 22, {0, 0, 0, 0}, M},
      {"HELLO.frame_width 16385", MT::Hello, &kHelloA, 22, {0x01, 0x40, 0, 0}, M},
      {"HELLO.frame_height 16385", MT::Hello, &kHelloA, 26, {0x01, 0x40, 0, 0}, M},
      {"HELLO.auth_token 1025 bytes (over the cap before past the end)", MT::Hello, &kHelloA, 30,
       {0x01, 0x04}, M},
      {"HELLO.auth_token past the end", MT::Hello, &kHelloA, 30, {0x09, 0x00}, T},
      {"HELLO.edge_name 257 bytes", MT::Hello, &kHelloA, 36, {0x01, 0x01}, M},
      {"WELCOME.version 0", MT::Welcome, &kWelcomeA, 0, {0, 0}, M},
      {"WELCOME.mode 3", MT::Welcome, &kWelcomeA, 10, {3}, M},
      {"WELCOME.accept_frames without raw", MT::Welcome, &kWelcomeA, 11, {6}, M},
      {"WELCOME.accept_frames bit 8", MT::Welcome, &kWelcomeA, 11, {9}, M},
      {"WELCOME.min_stride 0", MT::Welcome, &kWelcomeA, 12, {0, 0, 0, 0}, M},
      {"WELCOME.max_stride 2^20 + 1", MT::Welcome, &kWelcomeB, 16, {1, 0, 0x10, 0}, M},
      {"WELCOME.max_stride < min_stride", MT::Welcome, &kWelcomeA, 16, {7, 0, 0, 0}, M},
      {"WELCOME.threshold NaN", MT::Welcome, &kWelcomeA, 20, {0, 0, 0xc0, 0x7f}, M},
      {"WELCOME.threshold just above 1", MT::Welcome, &kWelcomeA, 20, {1, 0, 0x80, 0x3f}, M},
      {"WELCOME.threshold -1", MT::Welcome, &kWelcomeA, 20, {0, 0, 0x80, 0xbf}, M},
      {"WELCOME.scope 2", MT::Welcome, &kWelcomeA, 24, {2}, M},
      {"WELCOME.blob_kind 3", MT::Welcome, &kWelcomeA, 25, {3}, M},
      {"WELCOME.blob_kind none with a blob", MT::Welcome, &kWelcomeA, 25, {0}, M},
      {"WELCOME.blob_kind fp32 without a blob", MT::Welcome, &kWelcomeB, 25, {1}, M},
      {"WELCOME.version 4 (not a version this library speaks)", MT::Welcome, &kWelcomeSplit, 0,
       {4, 0}, M},
      {"WELCOME v2 scope 2 (Wanted is version 3's)", MT::Welcome, &kWelcomeSplit, 24, {2}, M},
      {"WELCOME v3 scope 3", MT::Welcome, &kWelcomeWantedV3, 24, {3}, M},
      {"WELCOME v3 scope 2 with an fp32 blob kind", MT::Welcome, &kWelcomeWantedV3, 25, {1}, M},
      {"WELCOME v2 Partial, train_from 0", MT::Welcome, &kWelcomeSplit, 26, {0}, M},
      {"WELCOME v2 Partial, train_from 11", MT::Welcome, &kWelcomeSplit, 26, {11}, M},
      {"WELCOME v2 train 2", MT::Welcome, &kWelcomeSplit, 27, {2}, M},
      {"WELCOME v2 Full with train_from 6", MT::Welcome, &kWelcomeFullV2, 26, {6}, M},
      {"WELCOME v2 Full with train 1", MT::Welcome, &kWelcomeFullV2, 27, {1}, M},
      {"WELCOME v2 read as version 1 (the blob length runs past the end)", MT::Welcome,
       &kWelcomeSplit, 0, {1, 0}, T},
      {"KEY_FRAME.encoding 3", MT::KeyFrame, &kKeyFrameRaw, 8, {3}, M},
      {"KEY_FRAME.width 0", MT::KeyFrame, &kKeyFramePng, 9, {0, 0, 0, 0}, M},
      {"KEY_FRAME.width 16385", MT::KeyFrame, &kKeyFramePng, 9, {0x01, 0x40, 0, 0}, M},
      {"KEY_FRAME.height 16385", MT::KeyFrame, &kKeyFramePng, 13, {0x01, 0x40, 0, 0}, M},
      {"KEY_FRAME raw data != width*height*3", MT::KeyFrame, &kKeyFrameRaw, 13, {2, 0, 0, 0}, M},
      {"KEY_FRAME.data past the end", MT::KeyFrame, &kKeyFrameRaw, 17, {7, 0, 0, 0}, T},
      {"UPDATE.next_stride 0", MT::Update, &kUpdateNone, 8, {0, 0, 0, 0}, M},
      {"UPDATE.next_stride 2^20 + 1", MT::Update, &kUpdateNone, 8, {1, 0, 0x10, 0}, M},
      {"UPDATE.accuracy NaN", MT::Update, &kUpdateNone, 12, {0, 0, 0xc0, 0x7f}, M},
      {"UPDATE.accuracy just above 1", MT::Update, &kUpdateF32, 12, {1, 0, 0x80, 0x3f}, M},
      {"UPDATE.steps 65537", MT::Update, &kUpdateF32, 16, {1, 0, 1, 0}, M},
      {"UPDATE.blob_kind 4", MT::Update, &kUpdateF32, 20, {4}, M},
      {"UPDATE.blob_kind 3 without a blob", MT::Update, &kUpdateNone, 20, {3}, M},
      {"WEIGHTS.blob_kind 0", MT::Weights, &kWeights, 0, {0}, M},
      {"WEIGHTS.blob_kind 3 (update blobs are UPDATE's)", MT::Weights, &kWeights, 0, {3}, M},
      {"WEIGHTS.blob past the end", MT::Weights, &kWeights, 1, {4, 0, 0, 0}, T},
      {"UPDATE.blob_kind none with a blob", MT::Update, &kUpdateF32, 20, {0}, M},
      {"UPDATE.blob_kind fp16 without a blob", MT::Update, &kUpdateNone, 20, {2}, M},
      {"LABELS.width 0", MT::Labels, &kLabels, 8, {0, 0, 0, 0}, M},
      {"LABELS.height 16385", MT::Labels, &kLabels, 12, {0x01, 0x40, 0, 0}, M},
      {"LABELS.labels != width*height", MT::Labels, &kLabels, 8, {2, 0, 0, 0}, M},
      {"ERROR.code 0", MT::Error, &kErrorAuth, 0, {0, 0}, M},
      {"ERROR.text 4097 bytes", MT::Error, &kErrorAuth, 2, {0x01, 0x10}, M},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    CHECK(payload_error(c.type, patched(*c.golden, c.off, c.with)) == c.want);
  }
  // Every payload ends after its last field.
  for (const Bytes* g : {&kHelloA, &kWelcomeA, &kWelcomeSplit, &kKeyFrameJpeg, &kUpdateF16,
                         &kLabels, &kErrorAuth, &kPing, &kPong, &kBye, &kResync, &kWeights}) {
    Bytes p(g->begin() + kHeaderSize, g->end());
    p.push_back(0);
    const MT t = MT(uint16_t((*g)[6]));
    INFO(message_type_name(t));
    CHECK(payload_error(t, p) == ErrorCode::TrailingBytes);
  }
}

// ---- the JSON dump of the corpus, for tools/protocol_decode.py --compare ----
namespace {

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s += d[p[i] >> 4], s += d[p[i] & 15];
  return "\"" + s + "\"";
}
std::string hex(const Bytes& b) { return hex(b.data(), b.size()); }
std::string hex(const std::string& s) {
  return hex(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
std::string num(uint64_t v) { return std::to_string(v); }
std::string flt(float v) {  // 9 significant digits, as the Python decoder writes them
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", double(v));
  return buf;
}
std::string jstr(const std::string& s) {  // names here are plain ASCII; escape the two musts
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

struct Fields {
  std::string s;
  void add(const char* k, const std::string& v) {
    s += std::string(s.empty() ? "" : ", ") + "\"" + k + "\": " + v;
  }
};

void body_fields(const Body& body, Fields& f) {
  if (auto* h = std::get_if<Hello>(&body)) {
    f.add("min_version", num(h->min_version));
    f.add("max_version", num(h->max_version));
    f.add("mode", num(uint8_t(h->mode)));
    f.add("accept_blobs", num(h->accept_blobs));
    f.add("layout_hash", num(h->layout_hash));
    f.add("weights_hash", num(h->weights_hash));
    f.add("frame_width", num(h->frame_width));
    f.add("frame_height", num(h->frame_height));
    f.add("auth_token", hex(h->auth_token));
    f.add("edge_name", hex(h->edge_name));
  } else if (auto* w = std::get_if<Welcome>(&body)) {
    f.add("version", num(w->version));
    f.add("session_id", num(w->session_id));
    f.add("mode", num(uint8_t(w->mode)));
    f.add("accept_frames", num(w->accept_frames));
    f.add("min_stride", num(w->min_stride));
    f.add("max_stride", num(w->max_stride));
    f.add("threshold", flt(w->threshold));
    f.add("scope", num(uint8_t(w->scope)));
    f.add("blob_kind", num(uint8_t(w->blob_kind)));
    f.add("train_from", num(w->train_from));
    f.add("train", num(uint8_t(w->train)));
    f.add("blob", hex(w->blob));
  } else if (auto* k = std::get_if<KeyFrame>(&body)) {
    f.add("frame_index", num(k->frame_index));
    f.add("encoding", num(uint8_t(k->encoding)));
    f.add("width", num(k->width));
    f.add("height", num(k->height));
    f.add("data", hex(k->data));
  } else if (auto* u = std::get_if<Update>(&body)) {
    f.add("key_frame", num(u->key_frame));
    f.add("next_stride", num(u->next_stride));
    f.add("accuracy", flt(u->accuracy));
    f.add("steps", num(u->steps));
    f.add("blob_kind", num(uint8_t(u->blob_kind)));
    f.add("blob", hex(u->blob));
  } else if (auto* l = std::get_if<Labels>(&body)) {
    f.add("frame_index", num(l->frame_index));
    f.add("width", num(l->width));
    f.add("height", num(l->height));
    f.add("labels", hex(l->labels));
  } else if (auto* e = std::get_if<ErrorMessage>(&body)) {
    f.add("code", num(uint16_t(e->code)));
    f.add("text", hex(e->text));
    f.add("code_name", jstr(error_code_name(e->code)));
  } else if (auto* p = std::get_if<Ping>(&body)) {
    f.add("nonce", num(p->nonce));
  } else if (auto* q = std::get_if<Pong>(&body)) {
    f.add("nonce", num(q->nonce));
  } else if (auto* r = std::get_if<Resync>(&body)) {
    f.add("weights_hash", num(r->weights_hash));
  } else if (auto* w = std::get_if<Weights>(&body)) {
    f.add("blob_kind", num(uint8_t(w->blob_kind)));
    f.add("blob", hex(w->blob));
  }
}

}  // namespace

// Hidden: run by the ctest entry "protocol semantics: ..." through
//   tools/protocol_decode.py --compare build/st_tests tests/protocol_corpus
// which sets ST_PROTOCOL_JSON_DIR (the files to decode) and ST_PROTOCOL_JSON_OUT (where the JSON
// goes) and compares it with its own decoding. Default Decoder options, as the Python side.
TEST_CASE("protocol corpus as JSON, for tools/protocol_decode.py --compare", "[.protocol-json]") {
  const char* out_path = std::getenv("ST_PROTOCOL_JSON_OUT");
  if (!out_path) FAIL("set ST_PROTOCOL_JSON_OUT (tools/protocol_decode.py --compare does)");
  const char* dir_env = std::getenv("ST_PROTOCOL_JSON_DIR");
  const std::filesystem::path dir = dir_env ? std::filesystem::path(dir_env)
                                            : st::test::source_dir() / "tests" / "protocol_corpus";
  std::vector<std::filesystem::path> files;
  for (auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end(),
            [](auto& a, auto& b) { return a.filename().string() < b.filename().string(); });
  REQUIRE(!files.empty());
  std::string json = "[\n";
  for (size_t i = 0; i < files.size(); ++i) {
    std::ifstream in(files[i], std::ios::binary);
    Bytes bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string outcome = "ok", msgs;
    Decoder d;
    size_t pos = 0;  // stream offset of the next message: its header gives size and CRC
    try {
      d.feed(bytes);
      Message m;
      while (d.next(m)) {
        const Header h = read_header(bytes.data() + pos);
        pos += kHeaderSize + h.payload_size;
        Fields f;
        f.add("type", jstr(message_type_name(m.type())));
        f.add("version", num(m.version));
        f.add("seq", num(m.seq));
        f.add("payload_size", num(h.payload_size));
        f.add("payload_crc", num(h.payload_crc));
        body_fields(m.body, f);
        msgs += std::string(msgs.empty() ? "" : ",\n   ") + "{" + f.s + "}";
      }
      d.finish();
    } catch (const ProtocolError& e) {
      outcome = error_code_name(e.code());
    }
    json += " {\"file\": " + jstr(files[i].filename().string()) + ", \"outcome\": " +
            jstr(outcome) + ",\n  \"messages\": [" + msgs + "]}" +
            (i + 1 < files.size() ? ",\n" : "\n");
  }
  json += "]\n";
  std::ofstream out(out_path, std::ios::binary);
  out << json;
  REQUIRE(out.good());
}

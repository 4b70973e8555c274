#!/usr/bin/env python3
"""An independent decoder of the ShadowTutor wire protocol, written from docs/protocol.md alone.

Reads byte streams (by default every file of tests/protocol_corpus/) and prints, as JSON, each
file's messages field by field and its outcome: "ok", or the name of the error code (§6) at
which decoding stopped. It decodes as the C++ protocol::Decoder does with its default options
(§8: 16 MiB message limit, header versions 1..2, sequence numbers checked, every type accepted),
following the order of checks of §7, so both must agree on every file.

  tools/protocol_decode.py [FILE_OR_DIR ...]          # prints the JSON
  tools/protocol_decode.py --compare ST_TESTS [DIR]   # runs st_tests' hidden JSON dump of the
                                                      # same files, compares, exits 1 on any
                                                      # difference (ctest "protocol semantics: ...")

Python standard library only. The JSON (one object per file, sorted by file name):
  {"file": NAME, "outcome": "ok" | CODE_NAME, "messages": [
     {"type": "HELLO", "version": 1, "seq": 0, "payload_size": N, "payload_crc": C, <fields>}]}
Integers are JSON numbers; f32 fields are written with 9 significant digits (enough to tell
any two floats apart); byte strings (str16, bytes32) are lower-case hex.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

# ---- §2: CRC32C, reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF ----
_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the check value §2 gives

MAGIC = b"STW1"
HEADER = 32
MAX_MESSAGE = 16 << 20  # §8, the default limit
VERSION_MIN, VERSION_MAX = 1, 3  # this document is version 3 and describes 1 and 2 too (§5)

# §6
CODE_NAMES = {
    1: "BadMagic", 2: "UnsupportedVersion", 3: "UnknownType", 4: "Oversize",
    5: "BadHeaderCrc", 6: "BadCrc", 7: "BadFlags", 8: "BadSequence", 9: "Truncated",
    10: "Malformed", 11: "TrailingBytes", 16: "UnexpectedMessage", 32: "AuthFailed",
    33: "LayoutMismatch", 34: "BadFrame", 35: "UnsupportedMode", 36: "Busy", 37: "Internal",
    38: "Timeout", 39: "ShuttingDown", 40: "Overflow", 41: "SplitMismatch", 42: "WeightsMismatch",
}

# §3: type -> (name, min payload, max payload or None)
TYPES = {
    1: ("HELLO", 34, 34 + 1024 + 256),
    2: ("WELCOME", 30, None),
    3: ("KEY_FRAME", 22, None),
    4: ("UPDATE", 25, None),
    5: ("LABELS", 21, None),
    6: ("ERROR", 4, 4 + 4096),
    7: ("PING", 8, 8),
    8: ("PONG", 8, 8),
    9: ("BYE", 0, 0),
    10: ("RESYNC", 8, 8),     # version 2
    11: ("WEIGHTS", 5, None),  # version 2
}
MAX_DIM = 16384
MAX_STRIDE = 1 << 20
MAX_STEPS = 65536


class DecodeError(Exception):
    def __init__(self, code, why):
        super().__init__(f"{code}: {why}")
        self.code = code


class Payload:
    """Reads the fields of one payload in order (§1 conventions, §7 step 3)."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def _take(self, n, field):
        if n > len(self.data) - self.pos:
            raise DecodeError("Truncated", f"{field} runs past the payload end")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, f): return self._take(1, f)[0]
    def u16(self, f): return struct.unpack("<H", self._take(2, f))[0]
    def u32(self, f): return struct.unpack("<I", self._take(4, f))[0]
    def u64(self, f): return struct.unpack("<Q", self._take(8, f))[0]
    def f32(self, f): return struct.unpack("<f", self._take(4, f))[0]

    def _prefixed(self, n, cap, f):
        # The length prefix against the field's cap first, then against the bytes left.
        if cap is not None and n > cap:
            raise DecodeError("Malformed", f"{f}: length {n} exceeds the cap {cap}")
        return self._take(n, f)

    def str16(self, f, cap): return self._prefixed(self.u16(f), cap, f)
    def bytes32(self, f): return self._prefixed(self.u32(f), None, f)

    def finish(self):
        if self.pos != len(self.data):
            left = len(self.data) - self.pos
            raise DecodeError("TrailingBytes", f"{left} bytes after the last field")


def bad(why):
    raise DecodeError("Malformed", why)


def check_dim(name, v):
    if not 1 <= v <= MAX_DIM:
        bad(f"{name} = {v}")


def check_stride(name, v):
    if not 1 <= v <= MAX_STRIDE:
        bad(f"{name} = {v}")


def check_unit(name, v):
    if not 0.0 <= v <= 1.0:  # NaN fails too
        bad(f"{name} = {v}")


def check_blob(kind, blob, highest=2):
    if kind > highest:
        bad(f"blob_kind = {kind}")
    if (kind == 0) != (len(blob) == 0):
        bad(f"blob of {len(blob)} bytes with blob_kind {kind}")


def parse_hello(p):
    m = {"min_version": p.u16("min_version"), "max_version": p.u16("max_version"),
         "mode": p.u8("mode"), "accept_blobs": p.u8("accept_blobs"),
         "layout_hash": p.u64("layout_hash"), "weights_hash": p.u64("weights_hash"),
         "frame_width": p.u32("frame_width"), "frame_height": p.u32("frame_height"),
         "auth_token": p.str16("auth_token", 1024), "edge_name": p.str16("edge_name", 256)}
    p.finish()
    if m["min_version"] < 1 or m["max_version"] < m["min_version"]:
        bad("versions")
    if m["mode"] > 2:
        bad("mode")
    if m["accept_blobs"] == 0 or m["accept_blobs"] & ~3:
        bad("accept_blobs")
    check_dim("frame_width", m["frame_width"])
    check_dim("frame_height", m["frame_height"])
    return m


def parse_welcome(p):
    m = {"version": p.u16("version"), "session_id": p.u64("session_id"), "mode": p.u8("mode"),
         "accept_frames": p.u8("accept_frames"), "min_stride": p.u32("min_stride"),
         "max_stride": p.u32("max_stride"), "threshold": p.f32("threshold"),
         "scope": p.u8("scope"), "blob_kind": p.u8("blob_kind")}
    if m["version"] >= 2:  # §3: the layout follows the payload's own version field
        m["train_from"] = p.u8("train_from")
        m["train"] = p.u8("train")
    else:  # a version-1 WELCOME means the paper's split (dec2, all tensors) in mode Partial
        m["train_from"] = 6 if m["mode"] == 0 else 0
        m["train"] = 0
    m["blob"] = p.bytes32("blob")
    p.finish()
    if m["version"] < 1 or m["version"] > VERSION_MAX:
        bad("version")
    if m["mode"] > 2:
        bad("mode")
    if not m["accept_frames"] & 1 or m["accept_frames"] & ~7:
        bad("accept_frames")
    check_stride("min_stride", m["min_stride"])
    check_stride("max_stride", m["max_stride"])
    if m["max_stride"] < m["min_stride"]:
        bad("max_stride < min_stride")
    check_unit("threshold", m["threshold"])
    if m["scope"] > 2:
        bad("scope")
    if m["scope"] == 2 and (m["version"] < 3 or m["blob_kind"] != 0 or m["mode"] == 2):
        bad("scope 2 (Wanted) needs version 3, no blob, and mode Partial or Full")
    check_blob(m["blob_kind"], m["blob"])
    if m["train"] > 1:
        bad("train")
    if m["mode"] == 0:
        if not 1 <= m["train_from"] <= 10:
            bad("train_from")
    elif m["train_from"] != 0 or m["train"] != 0:
        bad("train_from without mode Partial")
    return m


def parse_key_frame(p):
    m = {"frame_index": p.u64("frame_index"), "encoding": p.u8("encoding"),
         "width": p.u32("width"), "height": p.u32("height"), "data": p.bytes32("data")}
    p.finish()
    if m["encoding"] > 2:
        bad("encoding")
    check_dim("width", m["width"])
    check_dim("height", m["height"])
    if not m["data"]:
        bad("data empty")
    if m["encoding"] == 0 and len(m["data"]) != m["width"] * m["height"] * 3:
        bad("raw BGR data size")
    return m


def parse_update(p):
    m = {"key_frame": p.u64("key_frame"), "next_stride": p.u32("next_stride"),
         "accuracy": p.f32("accuracy"), "steps": p.u32("steps"),
         "blob_kind": p.u8("blob_kind"), "blob": p.bytes32("blob")}
    p.finish()
    check_stride("next_stride", m["next_stride"])
    check_unit("accuracy", m["accuracy"])
    if m["steps"] > MAX_STEPS:
        bad("steps")
    check_blob(m["blob_kind"], m["blob"], highest=3)  # 3: an update blob (version 2)
    return m


def parse_labels(p):
    m = {"frame_index": p.u64("frame_index"), "width": p.u32("width"),
         "height": p.u32("height"), "labels": p.bytes32("labels")}
    p.finish()
    check_dim("width", m["width"])
    check_dim("height", m["height"])
    if len(m["labels"]) != m["width"] * m["height"]:
        bad("labels size")
    return m


def parse_error(p):
    m = {"code": p.u16("code"), "text": p.str16("text", 4096)}
    p.finish()
    if m["code"] == 0:
        bad("code 0")
    m["code_name"] = CODE_NAMES.get(m["code"], "Unknown")
    return m


def parse_nonce(p):
    m = {"nonce": p.u64("nonce")}
    p.finish()
    return m


def parse_bye(p):
    p.finish()
    return {}


def parse_resync(p):
    m = {"weights_hash": p.u64("weights_hash")}
    p.finish()
    return m


def parse_weights(p):
    m = {"blob_kind": p.u8("blob_kind"), "blob": p.bytes32("blob")}
    p.finish()
    if m["blob_kind"] == 0:
        bad("WEIGHTS.blob_kind 0")
    check_blob(m["blob_kind"], m["blob"])
    return m


PARSERS = {1: parse_hello, 2: parse_welcome, 3: parse_key_frame, 4: parse_update,
           5: parse_labels, 6: parse_error, 7: parse_nonce, 8: parse_nonce, 9: parse_bye,
           10: parse_resync, 11: parse_weights}


def to_json_value(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float):
        return float(f"{v:.9g}")
    return v


def decode_stream(data):
    """Returns (messages, outcome) for one byte stream."""
    msgs, pos, seq = [], 0, 0
    try:
        while pos < len(data):
            avail = len(data) - pos
            head = data[pos:pos + min(avail, 4)]
            if head != MAGIC[:len(head)]:  # §7.1: byte by byte, as soon as it is there
                raise DecodeError("BadMagic", f"at offset {pos}")
            if avail < HEADER:
                raise DecodeError("Truncated", "stream ends inside a header")
            h = data[pos:pos + HEADER]
            version, mtype, flags, hseq, size, pcrc, hcrc = struct.unpack("<HHIQIII", h[4:])
            if crc32c(h[:28]) != hcrc:
                raise DecodeError("BadHeaderCrc", "")
            if version == 0 or (mtype not in (1, 6) and not VERSION_MIN <= version <= VERSION_MAX):
                raise DecodeError("UnsupportedVersion", f"version {version}")
            if mtype not in TYPES or (mtype > 9 and version < 2):  # §3: 10, 11 from version 2
                raise DecodeError("UnknownType", f"type {mtype}")
            name, lo, hi = TYPES[mtype]
            if flags != 0:
                raise DecodeError("BadFlags", f"flags {flags}")
            if HEADER + size > MAX_MESSAGE:
                raise DecodeError("Oversize", "message limit")
            if size < lo:
                raise DecodeError("Truncated", f"{name} payload {size} < {lo}")
            if hi is not None and size > hi:
                raise DecodeError("Oversize", f"{name} payload {size} > {hi}")
            if hseq != seq:
                raise DecodeError("BadSequence", f"seq {hseq}, expected {seq}")
            if avail < HEADER + size:
                raise DecodeError("Truncated", "stream ends inside a payload")
            payload = data[pos + HEADER:pos + HEADER + size]
            if crc32c(payload) != pcrc:
                raise DecodeError("BadCrc", "")
            fields = PARSERS[mtype](Payload(payload))
            if mtype == 2 and fields["version"] != version:  # §5: sent under the version it names
                raise DecodeError("Malformed", "WELCOME.version differs from the header's")
            m = {"type": name, "version": version, "seq": hseq, "payload_size": size,
                 "payload_crc": pcrc}
            m.update({k: to_json_value(v) for k, v in fields.items()})
            msgs.append(m)
            pos += HEADER + size
            seq += 1
        return msgs, "ok"
    except DecodeError as e:
        return msgs, e.code


def decode_paths(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += [os.path.join(p, n) for n in os.listdir(p)
                      if os.path.isfile(os.path.join(p, n))]
        else:
            files.append(p)
    out = []
    for f in sorted(files, key=os.path.basename):
        with open(f, "rb") as fh:
            msgs, outcome = decode_stream(fh.read())
        out.append({"file": os.path.basename(f), "outcome": outcome, "messages": msgs})
    return out


def differences(ours, theirs):
    """Lines naming each field where the two decodings of one file differ."""
    def short(v):
        t = json.dumps(v)
        return t if len(t) <= 60 else t[:57] + "..."
    out = []
    if ours["outcome"] != theirs["outcome"]:
        out.append(f"outcome: python {ours['outcome']}, C++ {theirs['outcome']}")
    a, b = ours["messages"], theirs["messages"]
    if len(a) != len(b):
        out.append(f"messages: python {len(a)}, C++ {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        for k in sorted(set(x) | set(y)):
            if x.get(k) != y.get(k):
                out.append(f"message {i} ({x.get('type')}) {k}: python {short(x.get(k))}, "
                           f"C++ {short(y.get(k))}")
    return out


def compare(st_tests, corpus):
    """Runs the C++ dump (st_tests' hidden "[.protocol-json]" case) and compares file by file."""
    ours = decode_paths([corpus])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cpp.json")
        env = dict(os.environ, ST_PROTOCOL_JSON_OUT=path, ST_PROTOCOL_JSON_DIR=corpus)
        r = subprocess.run([st_tests, "[.protocol-json]", "--warn", "NoTests"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 or not os.path.exists(path):
            print(r.stdout)
            print(f"protocol_decode: {st_tests} [.protocol-json] failed (exit {r.returncode})")
            return 1
        with open(path) as fh:
            theirs = json.load(fh)
    diffs = 0
    by_name = {f["file"]: f for f in theirs}
    for f in ours:
        other = by_name.pop(f["file"], None)
        if other is None:
            print(f"{f['file']}: missing from the C++ dump")
            diffs += 1
        elif other != f:
            print(f"{f['file']}: differs")
            for line in differences(f, other):
                print("  " + line)
            diffs += 1
    for name in by_name:
        print(f"{name}: only in the C++ dump")
        diffs += 1
    # The corpus names say what to expect: ok_* decode fully, err_<Code>_* stop at <Code>.
    for f in ours:
        name = f["file"]
        want = "ok" if name.startswith("ok_") else \
            name.split("_")[1] if name.startswith("err_") else None
        if want is not None and f["outcome"] != want:
            print(f"{name}: this decoder says {f['outcome']}, the name says {want}")
            diffs += 1
    n_msgs = sum(len(f["messages"]) for f in ours)
    if diffs:
        print(f"protocol_decode: {diffs} of {len(ours)} files differ")
        return 1
    if not ours or n_msgs == 0:
        print("protocol_decode: nothing was compared")
        return 1
    print(f"protocol_decode: {len(ours)} files, {n_msgs} messages: "
          "the C++ decoder and this one agree on every field and outcome")
    return 0


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    default_corpus = os.path.join(here, "..", "tests", "protocol_corpus")
    if argv and argv[0] == "--compare":
        if len(argv) not in (2, 3):
            print(__doc__)
            return 2
        return compare(argv[1], argv[2] if len(argv) == 3 else default_corpus)
    print(json.dumps(decode_paths(argv or [default_corpus]), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

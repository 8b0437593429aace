"""The NBD wire format (sheep.nbd.codec): bytes in, records out.  Byte strings
are written out by hand from the NBD protocol document, not produced by the
codec under test."""

import struct

import pytest

from sheep.nbd import codec as nbd
from sheep.proto.errors import CODES, SdError

pytestmark = pytest.mark.quick


def test_handshake_is_the_fixed_newstyle_greeting():
    assert nbd.handshake() == b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x03"


@pytest.mark.parametrize("raw,no_zeroes", [(b"\0\0\0\x01", False), (b"\0\0\0\x03", True)])
def test_client_flags(raw, no_zeroes):
    assert nbd.client_flags(raw) is no_zeroes


def test_unknown_client_flags_are_a_violation():
    with pytest.raises(nbd.ProtocolViolation, match="client flags"):
        nbd.client_flags(b"\0\0\0\x05")


def test_option_header_and_its_limits():
    raw = b"IHAVEOPT" + b"\0\0\0\x07" + b"\0\0\0\x10"
    assert nbd.option_header(raw) == (nbd.OPT_GO, 16)
    with pytest.raises(nbd.ProtocolViolation, match="magic"):
        nbd.option_header(b"IHAVEOPX" + raw[8:])
    with pytest.raises(nbd.ProtocolViolation, match="bytes"):
        nbd.option_header(raw[:12] + struct.pack(">I", nbd.MAX_OPTION + 1))


def test_option_reply_layout():
    assert nbd.option_reply(nbd.OPT_LIST, nbd.REP_ACK) == \
        bytes.fromhex("0003e889045565a9" "00000003" "00000001" "00000000")
    err = nbd.option_reply(nbd.OPT_STARTTLS, nbd.REP_ERR_POLICY, b"no")
    assert err[12:16] == b"\x80\x00\x00\x02" and err[16:20] == b"\0\0\0\x02" and err[20:] == b"no"


def test_list_reply_carries_the_name_length_and_name():
    r = nbd.list_reply("vm-disk")
    assert r[8:16] == b"\0\0\0\x03\0\0\0\x02" and r[16:20] == b"\0\0\0\x0b"
    assert r[20:] == b"\0\0\0\x07vm-disk"


@pytest.mark.parametrize("raw,why", [(b"a\0b", "NUL"), (b"x" * 4097, "too long"),
                                     (b"\xff\xfe", "UTF-8")])
def test_bad_export_names_are_refused_invalid(raw, why):
    with pytest.raises(nbd.Refused) as e:
        nbd.export_name(raw)
    assert e.value.code == nbd.REP_ERR_INVALID and why in e.value.message


def test_info_request_parses_the_name_and_the_requested_types():
    data = b"\0\0\0\x04disk" + b"\0\x02" + b"\0\x01\0\x03"
    assert nbd.info_request(data) == ("disk", {nbd.INFO_NAME, nbd.INFO_BLOCK_SIZE})
    assert nbd.info_request(b"\0\0\0\0\0\0") == ("", set())


@pytest.mark.parametrize("data,why", [
    (b"\0\0\0", "too short"),
    (b"\0\0\0\x09disk\0\0", "runs past"),
    (b"\0\0\0\x04disk\0\x02\0\x01", "request list"),   # says 2 types, carries 1
    (b"\0\0\0\x04disk\0\x00\0\x01", "request list"),   # trailing bytes
])
def test_malformed_info_requests_are_refused_invalid(data, why):
    with pytest.raises(nbd.Refused) as e:
        nbd.info_request(data)
    assert e.value.code == nbd.REP_ERR_INVALID and why in e.value.message


def test_info_replies_export_block_size_and_ack_always_name_when_asked():
    raw = nbd.info_replies(nbd.OPT_GO, "d", 1 << 30, 0x4D, "sheepdog VDI d", {nbd.INFO_NAME})
    replies = []
    while raw:
        magic, opt, rtype, n = struct.unpack_from(">QIII", raw)
        assert magic == nbd.REP_MAGIC and opt == nbd.OPT_GO
        replies.append((rtype, raw[20:20 + n]))
        raw = raw[20 + n:]
    assert replies == [
        (nbd.REP_INFO, b"\0\0" + (1 << 30).to_bytes(8, "big") + b"\0\x4d"),
        (nbd.REP_INFO, b"\0\x01d"),
        (nbd.REP_INFO, b"\0\x03" + struct.pack(">III", 1, 4096, 32 << 20)),
        (nbd.REP_ACK, b""),
    ]


def test_export_name_reply_with_and_without_zeroes():
    assert nbd.export_name_reply(512, 3, True) == (512).to_bytes(8, "big") + b"\0\x03"
    assert nbd.export_name_reply(512, 3, False).endswith(bytes(124))
    assert len(nbd.export_name_reply(512, 3, False)) == 134


def test_transmission_flags():
    assert nbd.transmission_flags(True) == 1 | 2 | 4 | 256  # read-only: multi-conn
    assert nbd.transmission_flags(False) == 1 | 4 | 8 | 32 | 64
    assert nbd.transmission_flags(False, structured=True) == 1 | 4 | 8 | 32 | 64 | 128  # DF
    assert nbd.transmission_flags(True, structured=True) == 1 | 2 | 4 | 128 | 256


def test_request_and_simple_reply():
    raw = bytes.fromhex("25609513" "0001" "0001" "00000000000000aa" "0000000000001000" "00000200")
    assert nbd.request(raw) == nbd.Request(flags=nbd.CMD_FLAG_FUA, cmd=nbd.CMD_WRITE,
                                           handle=0xAA, offset=4096, length=512)
    with pytest.raises(nbd.ProtocolViolation, match="magic"):
        nbd.request(b"\0" * 28)
    assert nbd.simple_reply(22, 0xAA) == bytes.fromhex("67446698" "00000016" "00000000000000aa")


def req(cmd, offset=0, length=512, flags=0):
    return nbd.Request(flags, cmd, 1, offset, length)


@pytest.mark.parametrize("r,size,ro,err", [
    (req(nbd.CMD_READ), 4096, False, 0),
    (req(nbd.CMD_WRITE, flags=nbd.CMD_FLAG_FUA), 4096, False, 0),
    (req(nbd.CMD_WRITE_ZEROES, flags=nbd.CMD_FLAG_NO_HOLE), 4096, False, 0),
    (req(nbd.CMD_TRIM, flags=nbd.CMD_FLAG_NO_HOLE), 4096, False, nbd.EINVAL),  # flag not allowed
    (req(nbd.CMD_CACHE), 4096, False, nbd.EINVAL),                            # not advertised
    (req(99), 4096, False, nbd.EINVAL),
    (req(nbd.CMD_FLUSH, offset=1 << 40), 4096, True, 0),                      # no range check
    (req(nbd.CMD_WRITE), 4096, True, nbd.EPERM),
    (req(nbd.CMD_TRIM), 4096, True, nbd.EPERM),
    (req(nbd.CMD_READ, length=nbd.MAX_REQUEST + 1), 1 << 40, False, nbd.EOVERFLOW),
    (req(nbd.CMD_READ, offset=4000), 4096, False, nbd.EINVAL),
    (req(nbd.CMD_WRITE, offset=4000), 4096, False, nbd.ENOSPC),
    (req(nbd.CMD_WRITE_ZEROES, offset=4000), 4096, False, nbd.ENOSPC),
    (req(nbd.CMD_TRIM, offset=4000), 4096, False, nbd.EINVAL),
])
def test_which_request_is_refused_with_which_errno(r, size, ro, err):
    assert nbd.request_errno(r, size, ro) == err


@pytest.mark.parametrize("r,structured,meta,err", [
    (req(nbd.CMD_BLOCK_STATUS), True, True, 0),
    (req(nbd.CMD_BLOCK_STATUS, flags=nbd.CMD_FLAG_REQ_ONE), True, True, 0),
    (req(nbd.CMD_BLOCK_STATUS), True, False, nbd.EINVAL),   # base:allocation not selected
    (req(nbd.CMD_BLOCK_STATUS, length=0), True, True, nbd.EINVAL),
    (req(nbd.CMD_BLOCK_STATUS, offset=4000), True, True, nbd.EINVAL),  # past the end
    (req(nbd.CMD_BLOCK_STATUS, flags=nbd.CMD_FLAG_FUA), True, True, 0),  # FUA: any command
    (req(nbd.CMD_BLOCK_STATUS, flags=nbd.CMD_FLAG_NO_HOLE), True, True, nbd.EINVAL),
    (req(nbd.CMD_READ, flags=nbd.CMD_FLAG_DF), True, False, 0),
    (req(nbd.CMD_READ, flags=nbd.CMD_FLAG_DF), False, False, nbd.EINVAL),  # DF not advertised
    (req(nbd.CMD_WRITE, flags=nbd.CMD_FLAG_DF), True, False, nbd.EINVAL),
])
def test_block_status_and_df_need_what_was_negotiated(r, structured, meta, err):
    assert nbd.request_errno(r, 4096, True, structured, meta) == err


def meta_data(name: bytes, *queries: bytes) -> bytes:
    out = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    return out + b"".join(struct.pack(">I", len(q)) + q for q in queries)


def test_meta_context_requests_and_replies():
    assert nbd.meta_context_request(meta_data(b"vm")) == ("vm", [])
    assert nbd.meta_context_request(meta_data(b"vm", b"base:allocation", b"qemu:dirty")) == \
        ("vm", ["base:allocation", "qemu:dirty"])
    for bad in (b"\0\0\0", meta_data(b"vm")[:-1], meta_data(b"vm", b"base:") + b"x",
                struct.pack(">I", 2) + b"vm" + struct.pack(">I", 1) + struct.pack(">I", 9) + b"x",
                meta_data(b"vm", b"\xff\xfe")):
        with pytest.raises(nbd.Refused) as e:
            nbd.meta_context_request(bad)
        assert e.value.code == nbd.REP_ERR_INVALID
    L, S = nbd.OPT_LIST_META_CONTEXT, nbd.OPT_SET_META_CONTEXT
    assert nbd.meta_contexts(L, []) == ["base:allocation"]
    assert nbd.meta_contexts(L, ["base:"]) == ["base:allocation"]
    assert nbd.meta_contexts(S, ["base:"]) == []  # SET needs the full name
    assert nbd.meta_contexts(S, ["qemu:dirty-bitmap:x", "base:allocation"]) == ["base:allocation"]
    assert nbd.meta_contexts(S, []) == [] and nbd.meta_contexts(L, ["qemu:"]) == []
    rep = nbd.meta_context_replies(S, ["base:allocation"])
    assert rep == (nbd.option_reply(S, nbd.REP_META_CONTEXT, b"\0\0\0\1base:allocation")
                   + nbd.option_reply(S, nbd.REP_ACK))
    assert nbd.meta_context_replies(L, ["base:allocation"]).startswith(
        nbd.option_reply(L, nbd.REP_META_CONTEXT, b"\0\0\0\0base:allocation"))
    assert nbd.meta_context_replies(S, []) == nbd.option_reply(S, nbd.REP_ACK)


def test_structured_chunks_byte_for_byte():
    assert nbd.structured_read(0xAA, 4096, 3) == bytes.fromhex(
        "668e33ef" "0001" "0001" "00000000000000aa" "0000000b" "0000000000001000")
    assert nbd.structured_error(0xAA, 5, "bad") == bytes.fromhex(
        "668e33ef" "0001" "8001" "00000000000000aa" "00000009" "00000005" "0003") + b"bad"
    assert nbd.structured_done(0xAA) == bytes.fromhex(
        "668e33ef" "0001" "0000" "00000000000000aa" "00000000")
    long = nbd.structured_error(1, 5, "é" * 3000)  # 6000 bytes of UTF-8: cut, still UTF-8
    assert len(long) == 20 + 6 + 4096 and long[26:].decode() == "é" * 2048
    assert nbd.block_status_reply(7, [(4096, 3), (512, 0)]) == bytes.fromhex(
        "668e33ef" "0001" "0005" "0000000000000007" "00000014" "00000001"
        "00001000" "00000003" "00000200" "00000000")


HZ = nbd.STATE_HOLE | nbd.STATE_ZERO


@pytest.mark.parametrize("index,offset,length,one,want", [
    ([0, 0, 0, 0], 0, 4 * 16, False, [(64, HZ)]),
    ([5, 5, 0, 7], 0, 4 * 16, False, [(32, 0), (16, HZ), (16, 0)]),  # 7: a parent's object
    ([5, 5, 0, 7], 8, 30, False, [(24, 0), (6, HZ)]),  # clipped to the range at both ends
    ([5, 5, 0, 7], 8, 30, True, [(24, 0)]),  # REQ_ONE: the first extent only
    ([0, 5], 20, 4, False, [(4, 0)]),
    ([5], 0, 40, False, [(16, 0), (24, HZ)]),  # past the index (never written): a hole
])
def test_allocation_extents_follow_the_index(index, offset, length, one, want):
    got = nbd.allocation(index, 16, offset, length, one)
    assert got == want
    assert sum(n for n, _f in got) == (want[0][0] if one else length)


def test_allocation_stops_at_max_extents():
    index = [i % 2 for i in range(2 * nbd.MAX_EXTENTS)]
    got = nbd.allocation(index, 1, 0, len(index))
    assert len(got) == nbd.MAX_EXTENTS and all(n == 1 for n, _f in got)


@pytest.mark.parametrize("code,err", [("READONLY", nbd.EPERM), ("INVALID_PARMS", nbd.EINVAL),
                                      ("NO_SPACE", nbd.ENOSPC), ("SHUTDOWN", nbd.ESHUTDOWN),
                                      ("EIO", nbd.EIO), ("NO_OBJ", nbd.EIO)])
def test_errno_of_a_cluster_error(code, err):
    assert nbd.errno_for(SdError(CODES[code])) == err


def test_errno_of_anything_else_is_eio():
    assert nbd.errno_for(ConnectionError("gone")) == nbd.EIO


@pytest.mark.parametrize("export,candidates", [
    ("disk", [("disk", None)]),
    ("disk:base", [("disk", "base"), ("disk:base", None)]),
    ("disk@3", [("disk", 3), ("disk@3", None)]),
    ("disk@0", [("disk@0", None)]),
    ("a:b@2", [("a:b", 2), ("a", "b@2"), ("a:b@2", None)]),
])
def test_export_name_candidates_best_first(export, candidates):
    assert nbd.parse_export(export) == candidates


def test_export_labels():
    assert nbd.export_label("d", "", 0, False) == "d"
    assert nbd.export_label("d", "base", 2, True) == "d:base"
    assert nbd.export_label("d", "", 2, True) == "d@2"

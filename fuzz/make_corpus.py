#!/usr/bin/env python3
"""Writes the committed seed corpus (fuzz/corpus/<target>/seed-*). Run from anywhere:
`python3 fuzz/make_corpus.py`. Seeds are valid protocol messages and short sessions, so that
the fuzzer starts from inputs that reach deep into each parser."""

import hashlib
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
UNL = b"AnRBam11OG1IUEhGVkRKOHQ3cEs4c2dtRMWDYbvALwOowOEG0lc="
UNL_HEX = "0274416a6d75386d4850484656444a387437704b3873676d44c58361bbc02f03a8c0e106d257"
NONCE = b"ab" * 32
NODE_HEX = b"74416a6d75386d4850484656444a387437704b38"


def write(target, seeds):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if old.startswith("seed-"):
            os.remove(os.path.join(d, old))
    for i, s in enumerate(seeds):
        with open(os.path.join(d, "seed-%02d" % i), "wb") as f:
            f.write(s)


def text(lines):
    return [b"\x00" + l for l in lines]


def structured(n):
    # Deterministic pseudo-random bytes for the structured modes.
    return [bytes([1 + i]) + hashlib.sha256(b"seed%d" % i).digest() * 4 for i in range(n)]


def data(slot, payload):
    out = b""
    while payload:
        chunk, payload = payload[:254], payload[254:]
        out += bytes([(slot << 3) | 1, len(chunk)]) + chunk
    return out


def open_(peer):
    return bytes([peer << 3])


def read(slot):
    return bytes([(slot << 3) | 3])


def eof(slot):
    return bytes([(slot << 3) | 2])


def advance(ms):
    return bytes([4, ms])


def other(kind, arg):
    return bytes([(arg << 3) | (5 + kind)])


write("line_framer", [
    b"\x10\x05BOOTS\x0aTRAP 5\r\nSO\x06URCE T\x03CP\n",
    b"\x48\x08\xff\xfe ok\r\n\x05fine\n",
    b"\x04\x0aabcdefgh\r\n\x02ok\x01\n",
    b"\x03" + b"\x10" + b"x" * 16 + b"\x05tail\n\x03ok\n",
    b"\x7f\x04a\r\r\n\x02\r\n",
])

write("rendezvous_request", text([
    b"BOOTSTRAP 5", b"BOOTSTRAP 100 50500", b"PASSIVE READY 50500 10", b"SIMULTANEOUS READY 0 0",
    b"SOURCE TCP 40123", b"SOURCE TCP", b"CANDIDATE 203.0.113.7 TCP 50500 50501",
    b"CANDIDATE [2001:db8::1]:8000 TCP 1", b"ACCEPT 198.51.100.2 40000 40001 TCP 1700000000.25",
    b"CLEAR", b"CLEAR 50500", b"QUIT", b"FIGHT 1.2.3.4 5 TCP 1", b"CHALLENGE 1.2.3.4 5 TCP",
    b"RELAY " + NONCE, b"RELAY " + NONCE.upper(),
    b"BOOTSTRAP +5", b"\tBOOTSTRAP\t7 ",
    b"BOOTSTRAP ANY 5", b"BOOTSTRAP IPV6 10 50500", b"BOOTSTRAP IPV4 1", b"SOURCE ADDR",
]) + structured(8))

write("rendezvous_response", text([
    b"NODES p:203.0.113.7:50500 p:[2001:db8::1]:8000 ", b"NODES EMPTY", b"REMOTE TCP 40123",
    b"PREDICTION SET", b"CHALLENGE 198.51.100.2 40000 40001 TCP", b"RELAY WAITING", b"RELAY OK",
    b"FIGHT 203.0.113.7 50500 TCP 1700000000.25", b"RECONNECT", b"ERROR line too long",
    b"NODES s:1.2.3.4:1", b"ERROR", b"p:203.0.113.7:50500", b"s:[2001:db8::1]:8000",
    b"REMOTE ADDR 2001:db8:1::2 40312 1700000000.25", b"NODES p:2001:db8::1:8000 ",
]) + structured(8))

write("unl", text([
    UNL, b"  " + UNL + b"\n", b"REVERSE_CONNECT:" + UNL + b":" + NONCE,
    b"RELAY_CONNECT:" + UNL + b":" + NONCE + b":11.0.0.2:8000", b"tAjmu8mHPHFVDJ8t7pK8",
    UNL[:-1] + b"A",
]) + [b"\x01" + bytes.fromhex(UNL_HEX)] + structured(6))

write("overlay_control", text([
    b"P2P/1 HELLO 0123456789abcdef 50500", b"P2P/1 IAM " + NODE_HEX,
    b"P2P/1 IAM " + NODE_HEX + b" " + NONCE, b"P2P/1 BCAST 00000000000000ab 8 hello world",
    b"P2P/1 BCAST 00000000000000ab 1 ", b"P2P/1 NOPE", b"just a line",
]) + [b"\x01" + hashlib.sha256(b"cache").digest() * 8] + structured(6))

write("mailbox_request", text([
    b"REGISTER " + NODE_HEX + b" s3cr3t!", b"SUBSCRIBE", b"PUT bob hello there  friend",
    b"PUT " + NODE_HEX + b" REVERSE_CONNECT:" + UNL + b":" + NONCE, b"LIST", b"ACK 17", b"PING",
    b"QUIT", b"ACK +1", b"REGISTER bob a b", b"CHALLENGE",
    b"REGISTER_KEY iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w " + b"A" * 86,
    b"REGISTER_KEY iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w short",
]) + structured(8))

write("mailbox_reply", text([
    b"OK REGISTERED bob NEW", b"OK REGISTERED bob EXISTING", b"OK SUBSCRIBED 3", b"OK PUT 1",
    b"OK LIST 2", b"OK ACK 1", b"MSG 5 - REVERSE_CONNECT:" + UNL + b":" + NONCE,
    b"MSG 6 alice hi", b"PONG", b"ERROR mailbox full",
    b"CHALLENGE [2001:db8::2]:8090 " + NONCE, b"CHALLENGE mailbox.example.net:8090 " + NONCE,
]) + structured(8))


def http(cap, raw):
    return b"\x00" + struct.pack("<H", cap) + raw


write("http_request", [
    http(8176, b"GET /net.php?action=is_port_forwarded&port=50500&proto=TCP HTTP/1.1\r\nHost: fc\r\n\r\n"),
    http(8176, b"GET /net.php?action=get_wan_ip HTTP/1.0\r\n\r\n"),
    http(8176, b"GET /v1/check?port=8080 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
    http(8176, b"GET /dht_msg.php?call=put&node_id=a&dest_node_id=b&msg=%41%42+c&list_pop=1 HTTP/1.1\r\n\r\n"),
    http(40, b"GET /" + b"a" * 60 + b" HTTP/1.1\r\n\r\n"),
    http(8176, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    http(8176, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
] + structured(6))

write("dht_msg_server", [
    open_(0) + data(0, b"REGISTER bob secret1\r\nSUBSCRIBE\r\n") + read(0)
    + open_(2) + data(2, b"REGISTER alice pw\r\nPUT bob hello\r\nPUT bob REVERSE_CONNECT:x\r\n")
    + read(2) + read(0) + data(0, b"ACK 1\r\nLIST\r\nPING\r\n") + read(0) + advance(210) + read(0),
    open_(1) + data(1, b"GET /dht_msg.php?call=register&node_id=carol&password=pw&port=50500&network_id=n HTTP/1.1\r\n\r\n")
    + read(1) + open_(3) + data(3, b"GET /dht_msg.php?call=put&node_id=carol&msg=hi HTTP/1.1\r\n\r\n") + read(3)
    + open_(2) + data(2, b"GET /dht_msg.php?call=list&node_id=carol&password=pw&list_pop=1&wait=1 HTTP/1.1\r\n\r\n")
    + advance(200) + advance(200) + read(2),
    open_(0) + data(0, b"GET /dht_msg.php?call=find_neighbours&node_id=carol&password=pw&network_id=n HTTP/1.1\r\n\r\n") + read(0),
    open_(0) + data(0, b"REGISTER bob pw\r\n" + b"PUT bob " + b"x" * 60 + b"\r\n" * 1) * 1 + data(0, (b"PUT bob " + b"y" * 50 + b"\r\n") * 4) + advance(100) + read(0),
    open_(0) + data(0, b"\xff\xfe\r\nNOPE\r\nPUT\r\nACK x\r\n") + read(0) + data(0, b"x" * 254) + read(0),
    open_(0) + open_(1) + open_(2) + open_(3) + eof(1) + advance(210) + advance(210),
    # Signed registration: a proof, a replay, a wrong server name, a secret for the key's box.
    open_(0) + data(0, b"CHALLENGE\r\n") + read(0) + other(1, 0) + read(0) + other(2, 0)
    + data(0, b"SUBSCRIBE\r\nREGISTER_KEY x y\r\n") + read(0)
    + open_(3) + data(3, b"CHALLENGE\r\n") + read(3) + other(1, 4 | 3) + read(3)
    + data(3, b"REGISTER_KEY\r\nCHALLENGE\r\n") + read(3) + other(1, 3) + read(3),
    open_(1) + data(1, b"REGISTER 6d6e6f CHALLENGE\r\nCHALLENGE\r\nCHALLENGE\r\n") + read(1)
    + other(1, 1 | 16) + read(1) + other(1, 1 | 16) + read(1),
])

write("forwarding_check_request", [
    open_(0) + data(0, b"GET /v1/check?port=8080 HTTP/1.1\r\nHost: fc\r\n\r\n") + other(0, 0) + read(0) + eof(0) + read(0),
    open_(2) + data(2, b"GET /net.php?action=is_port_forwarded&port=50500&proto=TCP HTTP/1.1\r\n\r\n") + advance(250) + advance(250) + read(2),
    open_(3) + data(3, b"GET /net.php?action=get_wan_ip HTTP/1.1\r\n\r\n") + read(3) + advance(210) + read(3),
    open_(0) + data(0, b"GET /v1/check?port=22&ip=10.0.0.1 HTTP/1.1\r\n\r\n") + read(0),
    open_(0) + data(0, b"GET /v1/check?port=22&host=example.com&target=1.2.3.4:80 HTTP/1.1\r\n\r\n") + read(0),
    open_(0) + open_(1) + data(0, b"GET /v1/check?port=1 HTTP/1.1\r\n\r\n") + data(1, b"GET /v1/check?port=2 HTTP/1.1\r\n\r\n")
    + open_(2) + data(2, b"GET /v1/check?port=3 HTTP/1.1\r\n\r\n") + other(0, 1) + other(0, 4) + read(0) + read(1) + read(2),
    open_(0) + data(0, b"GE") + data(0, b"T / HTTP/1.1\r\n") + advance(210) + advance(210) + read(0),
])

NODE = b"10.0.0.2"
write("rendezvous_server", [
    open_(2) + data(2, b"RELAY " + NONCE + b"\r\nearly bytes\n") + open_(3)
    + data(3, b"RELAY " + NONCE + b"\r\n\xff raw\x00") + read(2) + read(3)
    + data(2, b"more\r\n") + read(3),
    open_(2) + data(2, b"SIMULTANEOUS READY 0 0\r\n") + open_(3)
    + data(3, b"CANDIDATE 10.0.0.2 TCP 5000 5001\r\n") + read(2) + read(3)
    + data(2, b"ACCEPT 10.0.0.3 6000 6001 TCP 1000000000.5\r\n") + read(3),
    open_(0) + data(0, b"PASSIVE READY 50500 10\r\nBOOTSTRAP 5\r\nSOURCE TCP 1\r\n") + open_(4)
    + data(4, b"BOOTSTRAP 5\r\nPASSIVE READY 1 1\r\nCLEAR\r\nQUIT\r\n") + read(0) + read(4),
    open_(2) + data(2, b"SIMULTANEOUS READY 7 0\r\n") + advance(210) + advance(210) + open_(3)
    + data(3, b"CANDIDATE 10.0.0.2:7 TCP 1\r\n") + data(2, b"SIMULTANEOUS READY 7 0\r\n")
    + data(2, b"ACCEPT 10.0.0.3 9 TCP 1000000001\r\n") + read(3),
    open_(1) + data(1, b"FIGHT 10.0.0.9 1 TCP 1000000000\r\nCHALLENGE 10.0.0.9 1 TCP\r\nACCEPT 10.0.0.9 1 TCP 1000000000\r\n") + read(1),
    open_(0) + other(0, 0) + data(0, b"SOURCE TCP x\r\n" * 40) + read(0),
    open_(0) + data(0, b"x" * 254 + b"y" * 10) + read(0) + open_(1) + open_(2) + open_(3) + open_(4),
    # IPv6 (slot 4 is [2001:db8::9]): registrations, the family forms, a cross-family punch.
    open_(4) + data(4, b"PASSIVE READY 6000 1\r\nSIMULTANEOUS READY 0 0\r\nSOURCE ADDR\r\n")
    + open_(0) + data(0, b"BOOTSTRAP ANY 5\r\nBOOTSTRAP 5\r\nCANDIDATE 2001:db8::9 TCP 1\r\n")
    + read(0) + read(4) + data(4, b"BOOTSTRAP IPV6 5 6000\r\nCANDIDATE 10.0.0.2 TCP 1\r\n") + read(4),
])
# PCP datagrams (RFC 6887): mode 0 responses, mode 1 requests (see fuzz_targets/pcp.rs).
PCP_MAP_REQUEST = bytes.fromhex(
    "02010000 00001c20 00000000000000000000ffffc0000221"
    "0102030405060708090a0b0c 06000000 30393039 00000000000000000000ffff00000000".replace(" ", ""))
PCP_MAP_V6_OPTIONS = bytes.fromhex(
    "02010000 0000003c 20010db8000100000000000000000002"
    "0102030405060708090a0b0c 11000000 11940000 00000000000000000000000000000000"
    "01000010 20010db8000100000000000000000009"
    "03000014 00800050 20010db8000000000000000000000002".replace(" ", ""))
PCP_MINIUPNPD_ANSWER = bytes.fromhex(
    "028100000000003c0000126400000000000000000000000006722c8d838744d69c9d2157"
    "06000000c544c54400000000000000000000ffff0b000065")
PCP_REFUSED = bytes.fromhex(
    "0281000200000000000012720000000000000000000000000102030405060708090a0b0c"
    "06000000c60cc60c20010db8000100000000000000000002")
write("pcp", [
    b"\x00" + PCP_MINIUPNPD_ANSWER,
    b"\x00" + PCP_REFUSED,
    b"\x00" + PCP_MINIUPNPD_ANSWER + bytes.fromhex("02000000800000010ff000000"[:24]),
    b"\x00" + bytes.fromhex("028000000000001e000012bc000000000000000000000000"),
    b"\x00" + bytes.fromhex("0082000100001234"),
    b"\x01" + PCP_MAP_REQUEST,
    b"\x01" + PCP_MAP_V6_OPTIONS,
    b"\x01" + bytes.fromhex("020000000000000000000000000000000000ffffc0a80102"),
] + structured(6))
# Issue 16: UNL v3 (the README's vector), signed lines, the handshake, the frame codec.
UNL3 = (b"unl3.A9damAGCsQq31Uv-08lkBzoO4XLz2qYjJa8CGmj3B1EaAAABi8_laABwZ1UDdzTLAHEFxURsNMCoARTFRHc2"
        b"IAENuAAAAAAAAAAAAAAABcVEAmQOcnYuZXhhbXBsZS5uZXQfQDTGM2QHH0ABNMYzZAcfQWY0_zJgEt6hYt22DdFc"
        b"yzShJsIoMmPmLqaoDPwK1YEHtCS9g1CJKZ82y7jvywFQivikjHbxqA2NjuJG5vNbAQc")


def b64url_decode(text):
    import base64
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


write("signed_broadcast", text([
    b"P2P/1 SIGNED 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo 1700000000000 " + b"A" * 86 + b" hello overlay",
    b"P2P/1 SIGNED 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo 1700000000000 " + b"A" * 86 + b" ",
    b"P2P/1 SIGNED 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo +17 " + b"A" * 86 + b" x",
    b"P2P/1 SIGNED", b"P2P/1 SIGNED x 1 y z", b"hello",
]) + structured(4))

write("unl_v3", text([
    UNL3, b" " + UNL3 + b"\n", UNL, UNL3[:-1] + b"A", b"unl3.", b"unl3.AwAA",
    b"CHALLENGE mail.example.net:8001 " + NONCE,
    b"REGISTER_KEY 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo " + b"A" * 86,
    b"REVERSE3 " + UNL3 + b" " + NODE_HEX + b" 1700000000000 " + NONCE + b" " + b"A" * 86,
    b"RELAY3 " + UNL3 + b" " + NODE_HEX + b" 1700000000000 " + NONCE + b" 198.51.100.7:8000 " + b"A" * 86,
]) + [b"\x01" + b64url_decode(UNL3[5:])] + structured(6))

PREAMBLE = b"\x00p2p-nx1"
write("noise_handshake", [
    b"\x00" + bytes([8]) + PREAMBLE + bytes([34]) + b"\x00\x20" + hashlib.sha256(b"e").digest(),
    b"\x00" + bytes([3]) + PREAMBLE[:3] + bytes([5]) + PREAMBLE[3:],
    b"\x00" + bytes([20]) + b"ERROR unknown line\r\n",
    b"\x00" + bytes([12]) + PREAMBLE + b"\xff\xff\x00\x00",
    b"\x01\xff\xff\x00",
    b"\x01\x00\x14\x40",
    b"\x01\x00\x03\x01",
    b"\x01\x00\x40\x80",
])

write("frame_codec", [
    b"\x00\x10" + bytes([7]) + b"\x00\x05hello" + bytes([4]) + b"\x00\x00\x00\x03",
    b"\x00\x01" + bytes([4]) + b"\x00\x09ab",
    b"\x01" + bytes([20]) + b"\x00\x12" + hashlib.sha256(b"f").digest()[:18],
    b"\x01" + PREAMBLE + b"\x00\x01\x00",
    b"\x02hello\r\nworld\nthe third line\r\n",
    b"\x02" + b"x" * 300 + b"\n" + b"y" * 5,
])

print("corpus written to", ROOT)

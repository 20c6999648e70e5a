//! Arbitrary datagrams to the DNS listener's parser (`dns::wire`, hand-written): it never
//! panics; a parsed query has a lower-case name of at most 253 bytes that survives being
//! encoded again; the reply to it fits a datagram and echoes its id; the error reply to
//! anything echoes the header only.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use dns::wire::{self, ParseError, Rcode};
use libfuzzer_sys::fuzz_target;

/// egress-gateway/src/dns.rs's `wire` module and its constants, copied by `build.rs`.
#[allow(dead_code)]
mod dns {
    include!(concat!(env!("OUT_DIR"), "/dns_wire.rs"));
}

use dns::MAX_DATAGRAM;

#[derive(Arbitrary, Debug)]
struct Input {
    datagram: Vec<u8>,
    answers: Vec<(bool, u128)>,
}

fuzz_target!(|input: Input| {
    let p = &input.datagram;
    if let Some(err) = wire::error_reply(p, Rcode::FormErr) {
        assert_eq!(err.len(), 12);
        assert_eq!(err[..2], p[..2], "the error reply keeps the id");
        assert!(err[2] & 0x80 != 0, "the error reply is a response");
    }
    let q = match wire::parse_query(p) {
        Ok(q) => q,
        Err(ParseError::NotAQuery | ParseError::Malformed) => return,
    };
    assert!(q.name.len() <= 253, "{} bytes", q.name.len());
    assert!(!q.name.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii_graphic()), "{:?}", q.name);

    // The name, encoded again label by label, parses to the same query.
    let labels: Vec<&str> = q.name.split('.').collect();
    if !q.name.is_empty() && labels.iter().all(|l| !l.is_empty() && l.len() <= 63) {
        let mut again = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in &labels {
            again.push(l.len() as u8);
            again.extend_from_slice(l.as_bytes());
        }
        again.push(0);
        again.extend_from_slice(&q.qtype.to_be_bytes());
        again.extend_from_slice(&q.qclass.to_be_bytes());
        let q2 = wire::parse_query(&again).expect("a re-encoded query parses");
        assert_eq!((q2.name.as_str(), q2.qtype, q2.qclass), (q.name.as_str(), q.qtype, q.qclass));
    }

    let answers: Vec<IpAddr> = input
        .answers
        .iter()
        .map(|&(v4, bits)| if v4 { IpAddr::V4(Ipv4Addr::from(bits as u32)) } else { IpAddr::V6(Ipv6Addr::from(bits)) })
        .collect();
    let reply = wire::reply(&q, Rcode::NoError, &answers);
    assert!(reply.len() <= MAX_DATAGRAM, "reply of {} bytes", reply.len());
    assert_eq!(reply[..2], q.id.to_be_bytes(), "the reply keeps the id");
    let ancount = u16::from_be_bytes([reply[6], reply[7]]) as usize;
    assert!(ancount <= answers.len());
    assert_eq!(wire::parse_query(&reply), Err(ParseError::NotAQuery), "a reply is not taken for a query");
});

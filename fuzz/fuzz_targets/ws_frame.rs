//! Arbitrary bytes as a WebSocket stream (`proxy/ws_frame.rs`, hand-written), parsed as
//! the proxy does: frame after frame from the front of a buffer, then reassembled into
//! messages. No panic; a frame is the same whether its bytes came at once or in pieces
//! (every shorter prefix asks for more); its raw bytes are the input; control frames are
//! final and short; encoding a final frame again parses back to it; a message is the
//! concatenation of its fragments and never over the limit.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ws_frame::{Event, MAX_MESSAGE, Opcode, Reassembler};

/// The gateway's file, compiled here (it is private to `proxy`).
#[allow(dead_code)]
#[path = "../../egress-gateway/src/proxy/ws_frame.rs"]
mod ws_frame;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Client-to-server (masked) or server-to-client.
    masked: bool,
    stream: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut buf = &input.stream[..];
    let mut reassembler = Reassembler::default();
    // The message being reassembled, as the harness sees it: (text, payload, raw).
    let mut expected: Option<(bool, Vec<u8>, Vec<u8>)> = None;
    loop {
        let (frame, used) = match ws_frame::parse(buf, input.masked) {
            Ok(Some(parsed)) => parsed,
            Ok(None) | Err(_) => return,
        };
        assert!(used > 0 && used <= buf.len());
        assert_eq!(frame.raw, buf[..used]);
        for k in 0..used {
            assert_eq!(ws_frame::parse(&buf[..k], input.masked), Ok(None), "prefix of {k} of {used} bytes");
        }
        if frame.opcode.is_control() {
            assert!(frame.fin && frame.payload.len() <= 125);
        }
        if frame.fin {
            let mask = input.masked.then_some([0xa5, 0x01, 0x7e, 0xff]);
            let again = ws_frame::encode(frame.opcode, &frame.payload, mask);
            let (back, n) = ws_frame::parse(&again, input.masked).expect("valid").expect("whole");
            assert_eq!((n, back.opcode, &back.payload), (again.len(), frame.opcode, &frame.payload));
        }

        let fragment = (frame.opcode, frame.fin, frame.payload.clone(), frame.raw.clone());
        match reassembler.push(frame) {
            Ok(Event::Control(c)) => assert!(c.opcode.is_control()),
            Ok(Event::Pending) => {
                let (op, fin, payload, raw) = fragment;
                assert!(!fin);
                match expected.as_mut() {
                    Some(m) => {
                        assert_eq!(op, Opcode::Continuation);
                        m.1.extend_from_slice(&payload);
                        m.2.extend_from_slice(&raw);
                    }
                    None => expected = Some((op == Opcode::Text, payload, raw)),
                }
            }
            Ok(Event::Message(m)) => {
                let (op, fin, payload, raw) = fragment;
                assert!(fin);
                if expected.is_some() {
                    assert_eq!(op, Opcode::Continuation);
                }
                let (text, mut want, mut want_raw) = expected.take().unwrap_or((op == Opcode::Text, vec![], vec![]));
                want.extend_from_slice(&payload);
                want_raw.extend_from_slice(&raw);
                assert_eq!((m.text, &m.payload, &m.raw), (text, &want, &want_raw));
                assert!(m.payload.len() <= MAX_MESSAGE);
            }
            // A protocol error closes the connection: nothing more is read.
            Err(_) => return,
        }
        buf = &buf[used..];
    }
});

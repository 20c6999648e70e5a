//! WebSocket framing (RFC 6455 §5), pure: parse frames from a buffer, reassemble
//! fragmented messages, encode frames. No extensions are ever negotiated through the
//! gateway (the offer is stripped), so a set RSV bit is a protocol error.

/// Largest message (after reassembly) the gateway relays; larger ones close the
/// connection with 1009, since a message must be scanned whole.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One frame: its unmasked payload, and its bytes as received (forwarded unchanged when
/// the scan lets it pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("websocket message over {MAX_MESSAGE} bytes")]
    TooBig,
}

impl FrameError {
    /// The close code that says why (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::TooBig => 1009,
        }
    }
}

/// Parses one frame from the front of `buf`: `Ok(None)` when more bytes are needed.
/// `masked` is what the sender must do (clients mask, servers do not).
pub fn parse(buf: &[u8], masked: bool) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set (no extension was negotiated)"));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    if (b1 & 0x80 != 0) != masked {
        return Err(FrameError::Protocol(if masked { "client frame not masked" } else { "server frame masked" }));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    if opcode.is_control() && (len > 125 || !fin) {
        return Err(FrameError::Protocol("control frame fragmented or over 125 bytes"));
    }
    if len > MAX_MESSAGE as u64 {
        return Err(FrameError::TooBig);
    }
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else { return Ok(None) };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let end = at + len as usize;
    let Some(data) = buf.get(at..end) else { return Ok(None) };
    let mut payload = data.to_vec();
    if let Some(key) = mask {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
    }
    Ok(Some((Frame { fin, opcode, payload, raw: buf[..end].to_vec() }, end)))
}

/// Encodes one final frame; `mask` is the key for a client-to-server frame.
pub fn encode(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A close frame with a code and a reason cut to fit a control frame.
pub fn close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(Opcode::Close, &payload, mask)
}

/// A whole data message: its opcode, payload and the raw frames that carried it.
#[derive(Debug, Default)]
pub struct Message {
    pub text: bool,
    pub payload: Vec<u8>,
    pub raw: Vec<u8>,
}

/// Reassembles data frames into messages; control frames are returned as they come.
#[derive(Default)]
pub struct Reassembler {
    partial: Option<Message>,
}

/// What one frame completed.
#[derive(Debug)]
pub enum Event {
    /// A control frame, to pass on at once (it may arrive inside a fragmented message).
    Control(Frame),
    /// The last frame of a data message arrived.
    Message(Message),
    /// A fragment was buffered.
    Pending,
}

impl Reassembler {
    pub fn push(&mut self, frame: Frame) -> Result<Event, FrameError> {
        if frame.opcode.is_control() {
            return Ok(Event::Control(frame));
        }
        let message = match (frame.opcode, self.partial.take()) {
            (Opcode::Continuation, Some(mut m)) => {
                if m.payload.len() + frame.payload.len() > MAX_MESSAGE {
                    return Err(FrameError::TooBig);
                }
                m.payload.extend_from_slice(&frame.payload);
                m.raw.extend_from_slice(&frame.raw);
                m
            }
            (Opcode::Continuation, None) => return Err(FrameError::Protocol("continuation without a message")),
            (_, Some(_)) => return Err(FrameError::Protocol("new message inside a fragmented one")),
            (op, None) => Message { text: op == Opcode::Text, payload: frame.payload, raw: frame.raw },
        };
        if frame.fin {
            Ok(Event::Message(message))
        } else {
            self.partial = Some(message);
            Ok(Event::Pending)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(mut buf: &[u8], masked: bool) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some((f, n)) = parse(buf, masked).unwrap() {
            out.push(f);
            buf = &buf[n..];
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn encode_and_parse_round_trip_for_every_length_class() {
        for len in [0, 5, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let bytes = encode(Opcode::Binary, &payload, mask);
                let (f, n) = parse(&bytes, mask.is_some()).unwrap().unwrap();
                assert_eq!((n, f.payload, f.fin, f.opcode), (bytes.len(), payload.clone(), true, Opcode::Binary));
                // Every strict prefix asks for more bytes.
                assert_eq!(parse(&bytes[..bytes.len() - 1], mask.is_some()), Ok(None));
            }
        }
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut first = encode(Opcode::Text, b"hello ", Some([9, 9, 9, 9]));
        first[0] &= 0x7F; // not final
        let ping = encode(Opcode::Ping, b"p", Some([1, 1, 1, 1]));
        let last = {
            let mut f = encode(Opcode::Text, b"world", Some([7, 7, 7, 7]));
            f[0] = 0x80; // final continuation
            f
        };
        let wire = [first.clone(), ping, last.clone()].concat();
        let mut r = Reassembler::default();
        let events: Vec<Event> = frames(&wire, true).into_iter().map(|f| r.push(f).unwrap()).collect();
        assert!(matches!(events[0], Event::Pending));
        assert!(matches!(&events[1], Event::Control(f) if f.opcode == Opcode::Ping));
        let Event::Message(m) = &events[2] else { panic!("{events:?}") };
        assert!(m.text);
        assert_eq!(m.payload, b"hello world");
        assert_eq!(m.raw, [first, last].concat(), "the original frames are kept to be forwarded");
    }

    #[test]
    fn protocol_violations_are_errors() {
        assert!(parse(&encode(Opcode::Text, b"x", None), true).is_err(), "unmasked client frame");
        assert!(parse(&encode(Opcode::Text, b"x", Some([0; 4])), false).is_err(), "masked server frame");
        let mut rsv = encode(Opcode::Text, b"x", None);
        rsv[0] |= 0x40;
        assert!(parse(&rsv, false).is_err(), "permessage-deflate bit");
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
        assert_eq!(parse(&big, false), Err(FrameError::TooBig));
        let mut r = Reassembler::default();
        let cont = Frame { fin: true, opcode: Opcode::Continuation, payload: vec![], raw: vec![] };
        assert!(r.push(cont).is_err());
        let c = close(1008, &"é".repeat(100), None);
        assert!(c.len() <= 2 + 125 && std::str::from_utf8(&c[4..]).is_ok());
    }
}

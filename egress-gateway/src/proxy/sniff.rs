//! What a new stream speaks, from its first bytes: TLS, HTTP (1.x or h2 prior
//! knowledge), or something else. Pure classification plus one bounded read.
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::rewind::Rewind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tls,
    Http,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    #[error("client sent nothing within {0:?}")]
    Timeout(Duration),
    #[error("client closed the connection before sending anything")]
    Closed,
    #[error("reading from the client: {0}")]
    Io(#[from] std::io::Error),
}

/// Classifies by the first bytes (TLS handshake record, or an HTTP method token).
pub fn kind_of(prefix: &[u8]) -> Kind {
    match prefix {
        [0x16, 0x03, ..] | [0x16] => Kind::Tls,
        p if http_method_prefix(p) => Kind::Http,
        _ => Kind::Other,
    }
}

fn http_method_prefix(p: &[u8]) -> bool {
    const METHODS: [&[u8]; 10] =
        [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ", b"CONNECT ", b"TRACE ", b"PRI "];
    METHODS.iter().any(|m| {
        let n = m.len().min(p.len());
        n > 0 && p[..n] == m[..n]
    })
}

/// Reads the first bytes (at most one read, bounded by `timeout`) and returns the kind
/// and a stream that replays them.
pub async fn classify<I: AsyncRead + Unpin>(mut io: I, timeout: Duration) -> Result<(Kind, Rewind<I>), SniffError> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(timeout, io.read(&mut buf)).await.map_err(|_| SniffError::Timeout(timeout))??;
    if n == 0 {
        return Err(SniffError::Closed);
    }
    buf.truncate(n);
    Ok((kind_of(&buf), Rewind::new(Bytes::from(buf), io)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(kind_of(&[0x16, 0x03, 0x01, 0x02, 0x00]), Kind::Tls);
        assert_eq!(kind_of(b"GET / HTTP/1.1\r\n"), Kind::Http);
        assert_eq!(kind_of(b"POS"), Kind::Http);
        assert_eq!(kind_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Kind::Http);
        assert_eq!(kind_of(b"CONNECT a:443 HTTP/1.1\r\n"), Kind::Http);
        assert_eq!(kind_of(b"SSH-2.0-OpenSSH_9.2\r\n"), Kind::Other);
        assert_eq!(kind_of(b"\x00\x01"), Kind::Other);
        assert_eq!(kind_of(b"get / HTTP/1.1"), Kind::Other, "methods are case-sensitive");
    }
}

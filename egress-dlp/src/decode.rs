//! Request bodies are scanned decoded: gzip, deflate, br and zstd (stacked too) are
//! decompressed with a bound on size and ratio; beyond it the request is refused, never
//! forwarded unscanned.
use std::io::{Read, Write};

/// Largest decoded body.
pub const MAX_DECODED: usize = 16 * 1024 * 1024;
/// Largest decoded/encoded ratio (zip bombs).
pub const MAX_RATIO: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unsupported content-encoding {0:?}")]
    Unsupported(String),
    #[error("{0} body does not decode: {1}")]
    Corrupt(String, String),
    #[error("decoded body is larger than {MAX_DECODED} bytes or {MAX_RATIO} times its encoded size")]
    TooLarge,
}

/// Decodes `body` per a `Content-Encoding` value (codings applied in order, so they are
/// undone last first). `identity` or empty: unchanged.
pub fn decode_body(content_encoding: &str, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let codings: Vec<String> = content_encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let limit = MAX_DECODED.min(body.len().saturating_mul(MAX_RATIO).max(64 * 1024));
    let mut data = body.to_vec();
    for coding in codings.iter().rev() {
        data = match coding.as_str() {
            "gzip" | "x-gzip" => read_bounded(flate2::read::MultiGzDecoder::new(&data[..]), coding, limit)?,
            "deflate" => {
                // "deflate" is zlib-wrapped per the RFC, raw in practice; try both.
                read_bounded(flate2::read::ZlibDecoder::new(&data[..]), coding, limit)
                    .or_else(|_| read_bounded(flate2::read::DeflateDecoder::new(&data[..]), coding, limit))?
            }
            "br" => read_bounded(brotli::Decompressor::new(&data[..], 4096), coding, limit)?,
            "zstd" => {
                let decoder = zstd::stream::read::Decoder::new(&data[..])
                    .map_err(|e| DecodeError::Corrupt(coding.clone(), e.to_string()))?;
                read_bounded(decoder, coding, limit)?
            }
            other => return Err(DecodeError::Unsupported(other.to_string())),
        };
    }
    Ok(data)
}

/// A streamed body being decoded piece by piece (one coding; stacked codings on a stream
/// are refused). The ratio bound applies to the running totals.
pub struct StreamDecoder {
    coding: String,
    inner: Box<dyn Write + Send>,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    encoded: usize,
    decoded: usize,
}

/// A `Write` target shared with the decoder that writes into it.
struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StreamDecoder {
    /// `None` for identity; an error for codings a stream cannot be scanned through.
    pub fn new(content_encoding: &str) -> Result<Option<StreamDecoder>, DecodeError> {
        let codings: Vec<String> = content_encoding
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty() && c != "identity")
            .collect();
        let coding = match codings.as_slice() {
            [] => return Ok(None),
            [one] => one.clone(),
            _ => return Err(DecodeError::Unsupported(content_encoding.to_string())),
        };
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink(out.clone());
        let inner: Box<dyn Write + Send> = match coding.as_str() {
            "gzip" | "x-gzip" => Box::new(flate2::write::MultiGzDecoder::new(sink)),
            "deflate" => Box::new(flate2::write::ZlibDecoder::new(sink)),
            "br" => Box::new(brotli::DecompressorWriter::new(sink, 4096)),
            "zstd" => Box::new(
                zstd::stream::write::Decoder::new(sink)
                    .map_err(|e| DecodeError::Corrupt(coding.clone(), e.to_string()))?,
            ),
            other => return Err(DecodeError::Unsupported(other.to_string())),
        };
        Ok(Some(StreamDecoder { coding, inner, out, encoded: 0, decoded: 0 }))
    }

    /// Decodes the next piece; returns the bytes it produced.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecodeError> {
        self.encoded += chunk.len();
        self.inner.write_all(chunk).map_err(|e| DecodeError::Corrupt(self.coding.clone(), e.to_string()))?;
        self.inner.flush().map_err(|e| DecodeError::Corrupt(self.coding.clone(), e.to_string()))?;
        self.take()
    }

    fn take(&mut self) -> Result<Vec<u8>, DecodeError> {
        let produced = std::mem::take(&mut *self.out.lock().unwrap_or_else(|e| e.into_inner()));
        self.decoded += produced.len();
        if self.decoded > self.encoded.saturating_mul(MAX_RATIO).max(64 * 1024) {
            return Err(DecodeError::TooLarge);
        }
        Ok(produced)
    }
}

fn read_bounded(reader: impl Read, coding: &str, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt(coding.to_string(), e.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_each_coding_and_stacks() {
        let text = b"token ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa inside".to_vec();
        assert_eq!(decode_body("gzip", &gzip(&text)).unwrap(), text);
        let z = zstd::encode_all(&text[..], 3).unwrap();
        assert_eq!(decode_body("zstd", &z).unwrap(), text);
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22).write_all(&text).unwrap();
        assert_eq!(decode_body("br", &br).unwrap(), text);
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(&text).unwrap();
        assert_eq!(decode_body("deflate", &zl.finish().unwrap()).unwrap(), text);
        let stacked = zstd::encode_all(&gzip(&text)[..], 3).unwrap();
        assert_eq!(decode_body("gzip, zstd", &stacked).unwrap(), text);
        assert_eq!(decode_body("identity", &text).unwrap(), text);
    }

    #[test]
    fn a_stream_decodes_piece_by_piece_and_refuses_bombs() {
        let text: Vec<u8> = (0..20_000u32).flat_map(|i| format!("event {i}\n").into_bytes()).collect();
        let encoded = gzip(&text);
        let mut d = StreamDecoder::new("gzip").unwrap().unwrap();
        let mut out = Vec::new();
        for c in encoded.chunks(100) {
            out.extend(d.push(c).unwrap());
        }
        assert_eq!(out, text);
        assert!(StreamDecoder::new("identity").unwrap().is_none());
        assert!(StreamDecoder::new("gzip, br").is_err());
        let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
        let mut d = StreamDecoder::new("gzip").unwrap().unwrap();
        assert!(bomb.chunks(1000).map(|c| d.push(c)).any(|r| r == Err(DecodeError::TooLarge)));
    }

    #[test]
    fn refuses_bombs_unknown_and_corrupt() {
        let bomb = gzip(&vec![0u8; 32 * 1024 * 1024]);
        assert_eq!(decode_body("gzip", &bomb), Err(DecodeError::TooLarge));
        assert!(matches!(decode_body("compress", b"x"), Err(DecodeError::Unsupported(_))));
        assert!(matches!(decode_body("gzip", b"not gzip"), Err(DecodeError::Corrupt(..))));
    }
}

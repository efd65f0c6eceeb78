//! The chunked transfer coding (RFC 9112 §7.1). One state machine serves both directions: a
//! response is relayed as it came, the machine only finding where it ends; a request body is
//! decoded (and buffered, for retries).
//!
//! Parsing is strict (CRLF only, hex sizes of at most 15 digits, bounded trailers): a lenient
//! reading that differs from the server's is how request smuggling starts.

/// Trailer section bytes accepted before the message is refused.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("malformed chunked body")]
    Malformed,
    #[error("chunk size or trailers too large")]
    TooLarge,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Where a chunked message is, between calls to [`Chunked::feed`].
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    trailers: usize,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `input` up to the end of the message; `data` receives the chunk contents. Returns
    /// how many bytes belong to the message: all of `input` unless the message ended inside it.
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            if self.state == State::Data {
                let take = usize::try_from(self.size).unwrap_or(usize::MAX).min(input.len() - at);
                data(&input[at..at + take]);
                at += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            if self.state == State::Done {
                break;
            }
            self.step(input[at])?;
            at += 1;
        }
        Ok(at)
    }

    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        use State::*;
        self.state = match (self.state, byte) {
            (Size, b) if b.is_ascii_hexdigit() => {
                if self.digits == 15 {
                    return Err(ChunkError::TooLarge);
                }
                self.digits += 1;
                self.size = self.size * 16 + u64::from(hex_value(b));
                Size
            }
            (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
            (Size, b'\r') if self.digits > 0 => SizeLf,
            (Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return Err(ChunkError::Malformed),
            (Extension, _) => Extension,
            (SizeLf, b'\n') if self.size == 0 => TrailerStart,
            (SizeLf, b'\n') => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => {
                self.size = 0;
                self.digits = 0;
                Size
            }
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart | TrailerLine, b'\n') => return Err(ChunkError::Malformed),
            (TrailerLine, b'\r') => TrailerLf,
            (TrailerStart | TrailerLine, _) => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(ChunkError::TooLarge);
                }
                TrailerLine
            }
            (TrailerLf, b'\n') => TrailerStart,
            (EndLf, b'\n') => Done,
            _ => return Err(ChunkError::Malformed),
        };
        Ok(())
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in pieces {
            used += c.feed(piece, |d| out.extend_from_slice(d))?;
        }
        Ok((out, used, c.is_done()))
    }

    #[test]
    fn decodes_across_any_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let whole = decode(&[body]).expect("valid");
        assert_eq!(whole, (b"hello 0123456789".to_vec(), body.len() - 4, true));
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(decode(&[a, b]).expect("valid"), whole, "split at {split}");
        }
    }

    #[test]
    fn incomplete_is_not_done() {
        let (data, used, done) = decode(&[b"5\r\nhel"]).expect("valid so far");
        assert_eq!((data.as_slice(), used, done), (&b"hel"[..], 6, false));
    }

    #[test]
    fn refuses_what_a_server_might_read_differently() {
        for bad in [&b"5\nhello\r\n0\r\n\r\n"[..], b"x\r\n", b"\r\n", b"5\r\nhelloXX", b"0\r\n\n"] {
            assert_eq!(decode(&[bad]).map(|_| ()), Err(ChunkError::Malformed), "{bad:?}");
        }
        assert_eq!(decode(&[b"1000000000000000\r\n"]).map(|_| ()), Err(ChunkError::TooLarge));
    }
}

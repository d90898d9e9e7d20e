//! The on-disk frame of one record, and the scan that recovers a partition file.
//!
//! A frame is `[len: u32 LE][crc32: u32 LE][body: len bytes]`, where the CRC-32 (IEEE) covers the
//! body and the body is
//! `[key_len u32][key][payload_len u32][payload][header_count u32]([name_len u32][name][value_len u32][value])*`,
//! every integer little-endian. The length prefix lets a scan skip from frame to frame; the
//! checksum tells a complete frame from a torn or corrupted one after a crash.

use std::fs::File;
use std::io::{BufReader, Read};

use bytes::Bytes;
use loyalty_core::ports::{Offset, Partition, Record};
use loyalty_core::{Error, Result};

/// Bytes of the frame header (`len` and `crc32`).
pub(crate) const HEADER_LEN: usize = 8;

/// The smallest valid body: empty key, empty payload, no headers.
const MIN_BODY: usize = 12;

/// Encodes one record as a complete frame (header included), refusing bodies larger than
/// `max_body` so a caller cannot make the writer allocate without bound.
pub(crate) fn encode(
    key: &[u8],
    payload: &[u8],
    headers: &[(String, Bytes)],
    max_body: usize,
) -> Result<Vec<u8>> {
    let mut body_len: usize = 4 + key.len() + 4 + payload.len() + 4;
    for (name, value) in headers {
        body_len = body_len.saturating_add(8 + name.len() + value.len());
    }
    if body_len > max_body || body_len > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "record of {body_len} bytes exceeds the limit of {max_body} bytes"
        )));
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + body_len);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    put_bytes(&mut buf, key);
    put_bytes(&mut buf, payload);
    buf.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        put_bytes(&mut buf, name.as_bytes());
        put_bytes(&mut buf, value);
    }
    let crc = crc32fast::hash(&buf[HEADER_LEN..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Starts a frame at the end of `buf` (its header left blank for [`seal`]); returns where.
pub(crate) fn begin(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    start
}

/// Fills in the header of the frame started at `start`, whose body is the rest of `buf` (a
/// body the caller bounded to `u32`).
pub(crate) fn seal(buf: &mut [u8], start: usize) {
    let body = start + HEADER_LEN;
    let len = (buf.len() - body) as u32;
    let crc = crc32fast::hash(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..body].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths were bounded by the caller (the whole body fits in u32).
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Splits a frame header into `(body_len, crc)`.
pub(crate) fn parse_header(header: &[u8]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes(header.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
    Some((len, crc))
}

/// Whether a body length read from disk is plausible for this log.
pub(crate) fn plausible_len(len: usize, max_body: usize) -> bool {
    (MIN_BODY..=max_body).contains(&len)
}

/// Decodes a checksummed body into a record. `body` is a slice of a shared buffer, so key,
/// payload and header values are zero-copy views of it.
pub(crate) fn decode_body(
    body: Bytes,
    partition: Partition,
    offset: Offset,
) -> std::result::Result<Record, String> {
    let mut cur = Cursor { buf: body, pos: 0 };
    let key = cur.bytes()?;
    let payload = cur.bytes()?;
    let count = cur.u32()? as usize;
    // Each header takes at least 8 bytes: bound the allocation by what is really there.
    if count > cur.remaining() / 8 {
        return Err(format!("{count} headers cannot fit in the record"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = cur.bytes()?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "header name is not UTF-8")?;
        let value = cur.bytes()?;
        headers.push((name, value));
    }
    if cur.remaining() != 0 {
        return Err(format!("{} trailing bytes in the record", cur.remaining()));
    }
    Ok(Record {
        partition,
        offset,
        key,
        payload,
        headers,
    })
}

struct Cursor {
    buf: Bytes,
    pos: usize,
}

impl Cursor {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let end = self.pos + 4;
        let raw = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| "record ends inside a length".to_string())?;
        let mut le = [0u8; 4];
        le.copy_from_slice(raw);
        self.pos = end;
        Ok(u32::from_le_bytes(le))
    }

    fn bytes(&mut self) -> std::result::Result<Bytes, String> {
        let len = self.u32()? as usize;
        if len > self.remaining() {
            return Err(format!(
                "field of {len} bytes overruns the record ({} left)",
                self.remaining()
            ));
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }
}

/// Decodes every frame of `buf` (which holds exactly `count` frames, the first being record
/// `first_offset`), verifying each checksum again: the bytes came back from disk.
pub(crate) fn decode_frames(
    buf: Bytes,
    partition: Partition,
    first_offset: Offset,
    count: usize,
) -> Result<Vec<Record>> {
    let mut out = Vec::with_capacity(count);
    let mut pos = 0usize;
    for i in 0..count {
        let offset = first_offset + i as u64;
        let corrupt =
            |why: &str| Error::Corrupt(format!("partition {partition} offset {offset}: {why}"));
        let (len, crc) = buf
            .get(pos..pos + HEADER_LEN)
            .and_then(parse_header)
            .ok_or_else(|| corrupt("truncated frame header"))?;
        let start = pos + HEADER_LEN;
        let body = buf
            .get(start..start + len)
            .ok_or_else(|| corrupt("truncated frame body"))?;
        if crc32fast::hash(body) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let record = decode_body(buf.slice(start..start + len), partition, offset)
            .map_err(|e| corrupt(&e))?;
        out.push(record);
        pos = start + len;
    }
    Ok(out)
}

/// What a scan of a partition file found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// File position of each valid record, by offset.
    pub positions: Vec<u64>,
    /// End of the valid prefix: where the next frame goes.
    pub valid_len: u64,
    /// Why the scan stopped before the end of the file, if it did (a torn or corrupt tail).
    pub cut: Option<String>,
}

/// Reads a partition file from the start and finds its valid prefix: every frame with a
/// plausible length, a complete body, a matching checksum and a decodable body. The first frame
/// that fails stops the scan (it and everything after it are a tail torn by a crash).
pub(crate) fn scan(file: &File, file_len: u64, max_body: usize) -> std::io::Result<Scan> {
    let mut positions = Vec::new();
    let (valid_len, cut) = walk(file, file_len, max_body, |pos, body| {
        // A frame whose checksum matches but which does not decode was never written by this
        // code; it is cut like a torn one rather than served.
        decode_body(Bytes::copy_from_slice(body), 0, 0)
            .map_err(|e| format!("undecodable frame at position {pos}: {e}"))?;
        positions.push(pos);
        Ok(())
    })?;
    Ok(Scan {
        positions,
        valid_len,
        cut,
    })
}

/// Reads a file of frames from the start, handing each checksummed body (with its position) to
/// `accept`, and stops at the first frame that is torn, corrupt, or that `accept` refuses
/// (with its reason). Returns the end of the valid prefix and why it stopped before the end of
/// the file, if it did. Partition files and the journal share this framing.
pub(crate) fn walk(
    file: &File,
    file_len: u64,
    max_body: usize,
    mut accept: impl FnMut(u64, &[u8]) -> std::result::Result<(), String>,
) -> std::io::Result<(u64, Option<String>)> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut pos: u64 = 0;
    let mut header = [0u8; HEADER_LEN];
    let mut body = Vec::new();
    let cut = loop {
        let left = file_len - pos;
        if left == 0 {
            break None;
        }
        if left < HEADER_LEN as u64 {
            break Some(format!("{left} bytes of a frame header at position {pos}"));
        }
        reader.read_exact(&mut header)?;
        let Some((len, crc)) = parse_header(&header) else {
            break Some(format!("unreadable frame header at position {pos}"));
        };
        if !plausible_len(len, max_body) {
            break Some(format!("implausible frame length {len} at position {pos}"));
        }
        if left - (HEADER_LEN as u64) < len as u64 {
            break Some(format!(
                "frame of {len} bytes at position {pos} ends past the end of the file"
            ));
        }
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            break Some(format!("checksum mismatch in the frame at position {pos}"));
        }
        if let Err(why) = accept(pos, &body) {
            break Some(why);
        }
        pos += (HEADER_LEN + len) as u64;
    };
    Ok((pos, cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_frame_round_trip_and_checksum() {
        let headers = vec![("h1".to_string(), Bytes::from_static(b"v1"))];
        let frame = encode(b"key", b"payload", &headers, 1024).unwrap();
        let buf = Bytes::from(frame.clone());
        let recs = decode_frames(buf, 3, 7, 1).unwrap();
        assert_eq!(recs[0].key, Bytes::from_static(b"key"));
        assert_eq!(recs[0].payload, Bytes::from_static(b"payload"));
        assert_eq!(recs[0].headers, headers);
        assert_eq!((recs[0].partition, recs[0].offset), (3, 7));

        let mut bad = frame;
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(
            decode_frames(Bytes::from(bad), 0, 0, 1),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            encode(&[0; 100], b"", &[], 50),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn log_frame_rejects_lying_header_count() {
        // A body claiming a million headers in 12 bytes must fail, not allocate.
        let mut body = Vec::new();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&1_000_000u32.to_le_bytes());
        assert!(decode_body(Bytes::from(body), 0, 0).is_err());
    }
}

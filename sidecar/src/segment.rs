//! Segments: one object per flush, a zstd-compressed tar with one entry per file chunk,
//! named `<file>~<epoch>.<id>/<offset>` (`raylet.out~9f3c2a1b7d4e5f60.3/00000000000000001024`:
//! the checkpoint's epoch and the file's id name the stream). `tar --zstd -tf` lists them;
//! `rayshape-sidecar logs get` puts the chunks back together.
//!
//! The bytes of a segment depend only on its chunks (no timestamps, owners or modes from the
//! machine), so uploading the same plan again writes the same object.
//!
//! Segments are read back from a bucket that any pod allowed to write there could fill, so
//! [`read`] trusts nothing: only regular-file entries with relative names of normal
//! components, no more data than a segment can hold.

use crate::checkpoint::{valid_epoch, valid_relative};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// The most log bytes a segment holds (`flush.maxBytes` is at most this).
pub const MAX_DATA: u64 = crate::config::MAX_FLUSH_BYTES;
/// The most entries a segment holds: chunks of different files, each at least a header.
const MAX_ENTRIES: usize = 1 << 20;
/// The largest zstd window a segment needs (level 19 uses 2^23 bytes); a frame that asks for
/// more is refused rather than given the memory.
const WINDOW_LOG_MAX: u32 = 24;

/// The entry name of a chunk.
pub fn entry_name(name: &str, epoch: &str, id: u64, offset: u64) -> String {
    format!("{name}~{epoch}.{id}/{offset:020}")
}

/// Where a chunk belongs: its stream (`<file>~<epoch>.<id>`, or `<file>~<id>` as written
/// before epochs) and byte offset. `None` if the name is not of that form, or if the file
/// part could escape the directory it is written to (absolute, `..`, empty components).
pub fn parse_entry_name(path: &str) -> Option<(&str, u64)> {
    let (stream, offset) = path.rsplit_once('/')?;
    let (file, tag) = stream.rsplit_once('~')?;
    let id = match tag.split_once('.') {
        Some((epoch, id)) if valid_epoch(epoch) => id,
        Some(_) => return None,
        None => tag,
    };
    if !id.bytes().all(|b| b.is_ascii_digit()) || !offset.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse::<u64>().ok()?;
    if !valid_relative(file) {
        return None;
    }
    Some((stream, offset.parse().ok()?))
}

/// A chunk to pack: `len` bytes of `file` from `offset`.
pub struct Part<'a> {
    pub entry: String,
    pub file: &'a std::fs::File,
    pub offset: u64,
    pub len: u64,
}

/// Reads `len` bytes from `offset` without moving the file's cursor; fails if they are not
/// all there (the file was truncated while we read it).
struct At<'a> {
    file: &'a std::fs::File,
    pos: u64,
    left: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was read",
            ));
        }
        self.pos += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Pack the parts into a compressed segment.
pub fn build(parts: &[Part<'_>], level: i32) -> io::Result<Vec<u8>> {
    let encoder = zstd::stream::write::Encoder::new(Vec::new(), level)?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    for p in parts {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(p.len);
        let reader = At {
            file: p.file,
            pos: p.offset,
            left: p.len,
        };
        tar.append_data(&mut h, &p.entry, reader)?;
    }
    tar.into_inner()?.finish()
}

/// One chunk read back from a segment.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadChunk {
    /// `<file>~<epoch>.<id>`: a relative path of normal components.
    pub stream: String,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Why bytes are not a segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("not a zstd-compressed tar: {0}")]
    Format(#[from] io::Error),
    #[error(
        "entry {0:?} is a {1}, not a file chunk: refused (a rayshape segment holds only regular files)"
    )]
    NotAFile(String, &'static str),
    #[error(
        "entry {0:?} is not <file>~<epoch>.<id>/<offset> with a relative file name: refused (it could write outside the output directory)"
    )]
    Name(String),
    #[error("entry {0:?} ends past the largest offset a file can have")]
    Offset(String),
    #[error(
        "the segment holds more than {MAX_DATA} bytes of data or {MAX_ENTRIES} entries: not written by rayshape"
    )]
    TooLarge,
}

fn kind(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Directory => "directory",
        tar::EntryType::Char | tar::EntryType::Block => "device",
        tar::EntryType::Fifo => "FIFO",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

/// Unpack a segment, refusing anything `build` would not have written.
pub fn read(bytes: &[u8]) -> Result<Vec<ReadChunk>, SegmentError> {
    let mut decoder = zstd::stream::read::Decoder::new(bytes)?;
    decoder.window_log_max(WINDOW_LOG_MAX)?;
    let mut archive = tar::Archive::new(decoder);
    let mut out = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path_bytes();
        let path = String::from_utf8_lossy(&raw).into_owned();
        let t = entry.header().entry_type();
        if !t.is_file() {
            return Err(SegmentError::NotAFile(path, kind(t)));
        }
        let (stream, offset) =
            parse_entry_name(&path).ok_or_else(|| SegmentError::Name(path.clone()))?;
        let stream = stream.to_string();
        let size = entry.size();
        total = total.saturating_add(size);
        if total > MAX_DATA || out.len() >= MAX_ENTRIES {
            return Err(SegmentError::TooLarge);
        }
        if offset
            .checked_add(size)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(SegmentError::Offset(path));
        }
        // The header's size is checked above; reading stops there whatever the stream holds.
        let mut data = Vec::with_capacity(size as usize);
        (&mut entry).take(size).read_to_end(&mut data)?;
        if data.len() as u64 != size {
            return Err(SegmentError::Format(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry {path:?} is cut short"),
            )));
        }
        out.push(ReadChunk {
            stream,
            offset,
            data,
        });
    }
    Ok(out)
}

/// Why a chunk has no place in the reassembled files.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(
        "segment {0} names session {1:?}, which cannot be a directory name under --out: refused"
    )]
    Session(String, String),
    #[error("segment {key}: {stream} would end at {end}, past the largest file offset")]
    TooFar {
        key: String,
        stream: String,
        end: u64,
    },
    #[error(
        "segment {key} holds bytes {start}..{end} of {stream}, which another segment also holds: the store has a duplicate"
    )]
    Overlap {
        key: String,
        stream: String,
        start: u64,
        end: u64,
    },
}

/// Where the chunks of segments go, checked: no two chunks hold the same bytes of a stream,
/// and every place is a relative path of plain names.
#[derive(Default)]
pub struct Reassembly {
    ranges: BTreeMap<String, Vec<(u64, u64)>>,
}

/// A chunk's place: its path under the output directory and its byte range.
#[derive(Debug, PartialEq, Eq)]
pub struct Place {
    /// `<session>/<name>~<epoch>.<id>`.
    pub rel: String,
    pub start: u64,
    pub end: u64,
}

impl Reassembly {
    /// Check and place every chunk of segment `key` of `session` whose file is `file` (its
    /// name as first seen, or its stream), if given.
    pub fn place(
        &mut self,
        key: &str,
        session: &str,
        chunks: &[ReadChunk],
        file: Option<&str>,
    ) -> Result<Vec<Option<Place>>, PlaceError> {
        if !crate::checkpoint::valid_session(session) {
            return Err(PlaceError::Session(key.to_string(), session.to_string()));
        }
        let mut out = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let name = chunk
                .stream
                .rsplit_once('~')
                .map_or(chunk.stream.as_str(), |(n, _)| n);
            if file.is_some_and(|f| f != name && f != chunk.stream) {
                out.push(None);
                continue;
            }
            let rel = format!("{session}/{}", chunk.stream);
            let start = chunk.offset;
            let end =
                start
                    .checked_add(chunk.data.len() as u64)
                    .ok_or_else(|| PlaceError::TooFar {
                        key: key.to_string(),
                        stream: rel.clone(),
                        end: u64::MAX,
                    })?;
            let r = self.ranges.entry(rel.clone()).or_default();
            if start < end && r.iter().any(|(s, e)| start < *e && *s < end) {
                return Err(PlaceError::Overlap {
                    key: key.to_string(),
                    stream: rel,
                    start,
                    end,
                });
            }
            r.push((start, end));
            out.push(Some(Place { rel, start, end }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EPOCH: &str = "9f3c2a1b7d4e5f60";

    #[test]
    fn deterministic_round_trip_with_long_names() {
        let dir = std::env::temp_dir().join(format!("rs-seg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"hello world, no trailing newline").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let long = format!("events/{}.log", "x".repeat(150));
        let parts = [
            Part {
                entry: entry_name("raylet.out", EPOCH, 3, 6),
                file: &f,
                offset: 6,
                len: 5,
            },
            Part {
                entry: entry_name(&long, EPOCH, 4, 0),
                file: &f,
                offset: 0,
                len: 0,
            },
        ];
        let a = build(&parts, 3).unwrap();
        let b = build(&parts, 3).unwrap();
        assert_eq!(a, b, "same chunks, same bytes");
        let back = read(&a).unwrap();
        assert_eq!(
            back[0],
            ReadChunk {
                stream: format!("raylet.out~{EPOCH}.3"),
                offset: 6,
                data: b"world".to_vec()
            }
        );
        assert_eq!(back[1].stream, format!("{long}~{EPOCH}.4"));
        assert!(back[1].data.is_empty());
        let short = [Part {
            entry: entry_name("f", EPOCH, 1, 0),
            file: &f,
            offset: 30,
            len: 10,
        }];
        assert_eq!(
            build(&short, 3).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn entry_names() {
        assert_eq!(
            parse_entry_name("a/b~c.log~12/00000000000000000007"),
            Some(("a/b~c.log~12", 7))
        );
        let new = format!("raylet.out~{EPOCH}.3/00000000000000000009");
        assert_eq!(
            parse_entry_name(&new),
            Some((format!("raylet.out~{EPOCH}.3").as_str(), 9))
        );
        for bad in [
            "nope",
            "x~y/1",
            "../../etc/cron.d/x~1/0",
            "/etc/passwd~1/0",
            "a/../../b~1/0",
            "a//b~1/0",
            "a~1.2/0",
            "a~+1/0",
            "a~1/-0",
        ] {
            assert_eq!(parse_entry_name(bad), None, "{bad}");
        }
    }

    /// A segment with one entry written as an attacker would: raw header bytes, unchecked.
    fn planted(name: &str, kind: tar::EntryType, size: u64, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(data);
        raw.resize(raw.len().div_ceil(512) * 512 + 1024, 0);
        zstd::encode_all(&raw[..], 1).unwrap()
    }

    #[test]
    fn read_refuses_what_build_never_writes() {
        let ok = planted(
            "a~1/00000000000000000000",
            tar::EntryType::Regular,
            2,
            b"hi",
        );
        assert_eq!(read(&ok).unwrap()[0].data, b"hi");
        let cases = [
            ("../../x~1/0", tar::EntryType::Regular, "not <file>"),
            ("/etc/x~1/0", tar::EntryType::Regular, "not <file>"),
            ("l~1/0", tar::EntryType::Symlink, "symbolic link"),
            ("h~1/0", tar::EntryType::Link, "hard link"),
            ("d~1/0", tar::EntryType::Directory, "directory"),
        ];
        for (name, kind, why) in cases {
            let e = read(&planted(name, kind, 0, b"")).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("refused"), "{name}: {e}");
        }
        // A header claiming more than a segment holds is refused before anything is read.
        let big = planted("a~1/0", tar::EntryType::Regular, MAX_DATA + 1, b"");
        assert!(matches!(read(&big), Err(SegmentError::TooLarge)));
        let far = planted(
            "a~1/18446744073709551615",
            tar::EntryType::Regular,
            2,
            b"hi",
        );
        assert!(matches!(read(&far), Err(SegmentError::Offset(_))));
        assert!(read(b"not zstd").is_err());
    }

    #[test]
    fn reassembly_finds_duplicates_and_bad_sessions() {
        let chunk = |offset: u64, data: &[u8]| ReadChunk {
            stream: format!("raylet.out~{EPOCH}.1"),
            offset,
            data: data.to_vec(),
        };
        let mut r = Reassembly::default();
        let p = r
            .place("k1", "session_1", &[chunk(0, b"hello")], None)
            .unwrap();
        assert_eq!(
            p[0],
            Some(Place {
                rel: format!("session_1/raylet.out~{EPOCH}.1"),
                start: 0,
                end: 5
            })
        );
        assert!(r.place("k2", "session_1", &[chunk(5, b"!")], None).is_ok());
        let e = r
            .place("k3", "session_1", &[chunk(3, b"lo")], None)
            .unwrap_err();
        assert!(matches!(e, PlaceError::Overlap { .. }), "{e}");
        let e = r.place("k4", "..", &[chunk(9, b"x")], None).unwrap_err();
        assert!(matches!(e, PlaceError::Session(..)), "{e}");
        let filtered = r
            .place(
                "k5",
                "session_1",
                &[chunk(20, b"x")],
                Some("gcs_server.out"),
            )
            .unwrap();
        assert_eq!(filtered, vec![None]);
    }
}

//! Segments: one object per flush, a zstd-compressed tar with one entry per file chunk,
//! named `<file>~<id>/<offset>` (`raylet.out~3/00000000000000001024`). `tar --zstd -tf`
//! lists them; `rayshape-sidecar logs get` puts the chunks back together.
//!
//! The bytes of a segment depend only on its chunks (no timestamps, owners or modes from the
//! machine), so uploading the same plan again writes the same object.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// The entry name of a chunk.
pub fn entry_name(name: &str, id: u64, offset: u64) -> String {
    format!("{name}~{id}/{offset:020}")
}

/// Where a chunk belongs: its stream (`<file>~<id>`) and byte offset.
pub fn parse_entry_name(path: &str) -> Option<(&str, u64)> {
    let (stream, offset) = path.rsplit_once('/')?;
    let (_, id) = stream.rsplit_once('~')?;
    id.parse::<u64>().ok()?;
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
    pub stream: String,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Unpack a segment.
pub fn read(bytes: &[u8]) -> io::Result<Vec<ReadChunk>> {
    let decoder = zstd::stream::read::Decoder::new(bytes)?;
    let mut archive = tar::Archive::new(decoder);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let (stream, offset) = parse_entry_name(&path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry {path:?} is not <file>~<id>/<offset>"),
            )
        })?;
        let stream = stream.to_string();
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data)?;
        out.push(ReadChunk {
            stream,
            offset,
            data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
                entry: entry_name("raylet.out", 3, 6),
                file: &f,
                offset: 6,
                len: 5,
            },
            Part {
                entry: entry_name(&long, 4, 0),
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
                stream: "raylet.out~3".into(),
                offset: 6,
                data: b"world".to_vec()
            }
        );
        assert_eq!(back[1].stream, format!("{long}~4"));
        assert!(back[1].data.is_empty());
        let short = [Part {
            entry: entry_name("f", 1, 0),
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
        assert_eq!(parse_entry_name("nope"), None);
        assert_eq!(parse_entry_name("x~y/1"), None);
    }
}

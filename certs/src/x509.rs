//! Just enough DER to read three fields of a certificate: `notAfter`, for expiry metrics
//! and checks; the subject's common name, to sign again with a CA this tool made; and the
//! subject alternative names, which a renewal keeps. Walking to three fields does not
//! justify an X.509 crate.

/// The fields of a certificate's tbsCertificate up to its subject, and what follows.
struct Tbs<'a> {
    /// The content of `validity`.
    validity: &'a [u8],
    /// The subject's Name, header included.
    subject: &'a [u8],
    /// subjectPublicKeyInfo, the unique IDs and the extensions.
    rest: &'a [u8],
}

fn tbs(der: &[u8]) -> Option<Tbs<'_>> {
    let (cert, _) = element(der, 0x30)?;
    let (mut tbs, _) = element(cert, 0x30)?;
    // version [0] EXPLICIT, optional
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs, 0xa0)?.1;
    }
    let (_, rest) = element(tbs, 0x02)?; // serialNumber
    let (_, rest) = element(rest, 0x30)?; // signature algorithm
    let (_, rest) = element(rest, 0x30)?; // issuer
    let (validity, rest) = element(rest, 0x30)?;
    let (_, after_subject) = element(rest, 0x30)?;
    let subject = rest.get(..rest.len() - after_subject.len())?;
    Some(Tbs {
        validity,
        subject,
        rest: after_subject,
    })
}

/// `notAfter` of a DER certificate, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, after) = any_element(tbs(der)?.validity)?; // notBefore
    let (tag, value) = (after.first().copied()?, any_element(after)?.0);
    time(tag, value)
}

/// The subject's common name (the first CN attribute), if it has one.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (mut subject, _) = element(tbs(der)?.subject, 0x30)?;
    const CN: [u8; 3] = [0x55, 0x04, 0x03]; // 2.5.4.3
    while !subject.is_empty() {
        let (set, next) = element(subject, 0x31)?;
        let (attr, _) = element(set, 0x30)?;
        let (oid, value) = element(attr, 0x06)?;
        if oid == CN {
            let tag = *value.first()?;
            let (text, _) = any_element(value)?;
            // UTF8String, PrintableString, IA5String
            if matches!(tag, 0x0c | 0x13 | 0x16) {
                return String::from_utf8(text.to_vec()).ok();
            }
            return None;
        }
        subject = next;
    }
    None
}

/// A certificate's subject alternative names that a renewal keeps.
#[derive(Debug, PartialEq, Eq)]
pub struct Sans {
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

/// The DNS names and IP addresses of the subject alternative names extension (none if the
/// certificate has no such extension; other kinds of name are skipped). `Err` says what is
/// malformed.
pub fn subject_alt_names(der: &[u8]) -> Result<Sans, &'static str> {
    let bad = "not a DER certificate";
    let t = tbs(der).ok_or(bad)?;
    let (_, mut rest) = element(t.rest, 0x30).ok_or(bad)?; // subjectPublicKeyInfo
    let mut sans = Sans {
        dns: Vec::new(),
        ips: Vec::new(),
    };
    // issuerUniqueID [1], subjectUniqueID [2], then extensions [3]
    while let Some(&tag) = rest.first() {
        let (value, next) = any_element(rest).ok_or(bad)?;
        rest = next;
        if tag != 0xa3 {
            continue;
        }
        let bad = "malformed extensions";
        let (mut exts, _) = element(value, 0x30).ok_or(bad)?;
        const SAN: [u8; 3] = [0x55, 0x1d, 0x11]; // 2.5.29.17
        while !exts.is_empty() {
            let (ext, next) = element(exts, 0x30).ok_or(bad)?;
            exts = next;
            let (oid, mut body) = element(ext, 0x06).ok_or(bad)?;
            if oid != SAN {
                continue;
            }
            let bad = "malformed subject alternative names";
            if body.first() == Some(&0x01) {
                body = any_element(body).ok_or(bad)?.1; // critical
            }
            let (octets, _) = element(body, 0x04).ok_or(bad)?;
            let (mut names, _) = element(octets, 0x30).ok_or(bad)?;
            while let Some(&tag) = names.first() {
                let (v, next) = any_element(names).ok_or(bad)?;
                names = next;
                match tag {
                    0x82 => sans.dns.push(
                        String::from_utf8(v.to_vec()).map_err(|_| "a DNS name that is not text")?,
                    ),
                    0x87 => sans.ips.push(match v.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(v).map_err(|_| bad)?),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(v).map_err(|_| bad)?),
                        _ => return Err("an IP address of neither 4 nor 16 bytes"),
                    }),
                    _ => {}
                }
            }
        }
    }
    Ok(sans)
}

/// The content of the element at the start of `data` with the given tag, and what follows.
fn element(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *data.first()? != tag {
        return None;
    }
    any_element(data)
}

fn any_element(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let first_len = *data.get(1)?;
    let (len, header) = if first_len & 0x80 == 0 {
        (first_len as usize, 2)
    } else {
        let n = (first_len & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in data.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((data.get(header..end)?, data.get(end..)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| rest.get(r)?.parse::<i64>().ok();
    let (mo, d, h, mi, se) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    Some(days_from_civil(year, mo, d)? * 86400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146097 + doe - 719468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_of_generated_certificates() {
        for (year, month, day) in [(2031, 6, 15), (2049, 12, 31), (2051, 1, 2)] {
            let mut params = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, month, day);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let want = days_from_civil(year as i64, month as i64, day as i64).unwrap() * 86400;
            assert_eq!(not_after(cert.der()), Some(want), "{year}-{month}-{day}");
        }
    }

    #[test]
    fn reads_the_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "rayshape");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rayshape CA 2026-11-29");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_common_name(cert.der()).as_deref(),
            Some("rayshape CA 2026-11-29")
        );
        assert_eq!(subject_common_name(b"\x30\x00"), None);
    }

    #[test]
    fn reads_the_subject_alternative_names() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".into(), "b.ns.svc".into()]).unwrap();
        for ip in ["127.0.0.1", "fd00::7"] {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.parse().unwrap()));
        }
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "x@y.example".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("spiffe://c/ns/x".try_into().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let sans = subject_alt_names(cert.der()).unwrap();
        assert_eq!(sans.dns, ["a.example", "b.ns.svc"]);
        assert_eq!(
            sans.ips,
            [
                "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        // Every cut of it is refused or read, never a panic.
        for n in 0..cert.der().len() {
            let _ = subject_alt_names(&cert.der()[..n]);
        }

        // An empty subject makes the extension critical (RFC 5280); many names make its
        // lengths take more than one byte.
        let many: Vec<String> = (0..40)
            .map(|i| format!("host-{i}.rayshape.example"))
            .collect();
        let mut params = rcgen::CertificateParams::new(many.clone()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        let critical_san = [0x06, 0x03, 0x55, 0x1d, 0x11, 0x01, 0x01, 0xff];
        assert!(cert.der().windows(8).any(|w| w == critical_san));
        assert_eq!(subject_alt_names(cert.der()).unwrap().dns, many);

        // Without the extension: no names, not an error.
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_alt_names(cert.der()).unwrap().dns,
            Vec::<String>::new()
        );
        assert!(subject_alt_names(b"\x30\x03\x30\x01\x00").is_err());
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11017));
        assert_eq!(time(0x17, b"260101000000Z"), Some(1767225600));
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}

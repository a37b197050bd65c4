//! Just enough DER to read three fields of a certificate: `notAfter`, for expiry metrics
//! and checks; the subject's common name, to sign again with a CA this tool made; and the
//! subject alternative names, which a renewal keeps. Walking to three fields does not
//! justify an X.509 crate.

/// `notAfter` of a DER certificate, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (cert, _) = element(der, 0x30)?;
    let (mut tbs, _) = element(cert, 0x30)?;
    // version [0] EXPLICIT, optional
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs, 0xa0)?.1;
    }
    let (_, rest) = element(tbs, 0x02)?; // serialNumber
    let (_, rest) = element(rest, 0x30)?; // signature algorithm
    let (_, rest) = element(rest, 0x30)?; // issuer
    let (validity, _) = element(rest, 0x30)?;
    let (_, after) = any_element(validity)?; // notBefore
    let (tag, value) = (after.first().copied()?, any_element(after)?.0);
    time(tag, value)
}

/// The subject's common name (the first CN attribute), if it has one.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = element(der, 0x30)?;
    let (mut tbs, _) = element(cert, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs, 0xa0)?.1;
    }
    let (_, rest) = element(tbs, 0x02)?; // serialNumber
    let (_, rest) = element(rest, 0x30)?; // signature algorithm
    let (_, rest) = element(rest, 0x30)?; // issuer
    let (_, rest) = element(rest, 0x30)?; // validity
    let (mut subject, _) = element(rest, 0x30)?;
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

/// The DNS names and IP addresses of the subject alternative names extension, if the
/// certificate has one.
pub fn subject_alt_names(der: &[u8]) -> Option<(Vec<String>, Vec<std::net::IpAddr>)> {
    let (cert, _) = element(der, 0x30)?;
    let (mut tbs, _) = element(cert, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs, 0xa0)?.1;
    }
    let (_, rest) = element(tbs, 0x02)?; // serialNumber
    let (_, rest) = element(rest, 0x30)?; // signature algorithm
    let (_, rest) = element(rest, 0x30)?; // issuer
    let (_, rest) = element(rest, 0x30)?; // validity
    let (_, rest) = element(rest, 0x30)?; // subject
    let (_, mut rest) = element(rest, 0x30)?; // subjectPublicKeyInfo
    // issuerUniqueID [1], subjectUniqueID [2], then extensions [3]
    while let Some(&tag) = rest.first() {
        let (value, next) = any_element(rest)?;
        if tag != 0xa3 {
            rest = next;
            continue;
        }
        let (mut exts, _) = element(value, 0x30)?;
        const SAN: [u8; 3] = [0x55, 0x1d, 0x11]; // 2.5.29.17
        while !exts.is_empty() {
            let (ext, next) = element(exts, 0x30)?;
            let (oid, mut body) = element(ext, 0x06)?;
            if oid == SAN {
                if body.first() == Some(&0x01) {
                    body = any_element(body)?.1; // critical
                }
                let (octets, _) = element(body, 0x04)?;
                let (mut names, _) = element(octets, 0x30)?;
                let (mut dns, mut ips) = (Vec::new(), Vec::new());
                while let Some(&tag) = names.first() {
                    let (v, next) = any_element(names)?;
                    match tag {
                        0x82 => dns.push(String::from_utf8(v.to_vec()).ok()?),
                        0x87 => ips.push(match v.len() {
                            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
                            16 => std::net::IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
                            _ => return None,
                        }),
                        _ => {}
                    }
                    names = next;
                }
                return Some((dns, ips));
            }
            exts = next;
        }
        return None;
    }
    None
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
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_alt_names(cert.der()),
            Some((
                vec!["a.example".to_string(), "b.ns.svc".to_string()],
                vec!["127.0.0.1".parse().unwrap(), "fd00::7".parse().unwrap()]
            ))
        );
        // Without the extension.
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_alt_names(cert.der()), None);
        assert_eq!(subject_alt_names(b"\x30\x03\x30\x01\x00"), None);
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

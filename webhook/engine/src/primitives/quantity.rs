//! Kubernetes resource quantities (`2`, `1500m`, `8Gi`, `1e3`), exact to the milli-unit.
//!
//! Values are held as signed milli-units in an `i128`, which is exact for every quantity the
//! API server accepts (it rejects anything beyond 2^63 units). Sub-milli inputs (`n`, `u`)
//! round up, the way the API server canonicalises CPU.

use rayshape_json::Value;
use std::fmt;
use thiserror::Error;

/// A resource quantity in milli-units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(i128);

/// Why a string is not a Kubernetes quantity.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "{input:?} is not a Kubernetes quantity ({reason}); expected a number with an optional suffix such as 2, 500m, 8Gi or 1e3"
)]
pub struct QuantityError {
    input: String,
    reason: &'static str,
}

const MAX_MILLIS: i128 = (i64::MAX as i128) * 1000;

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);

    pub fn from_units(u: i64) -> Self {
        Quantity(u as i128 * 1000)
    }

    pub fn millis(self) -> i128 {
        self.0
    }

    /// Whole units, rounded up (Kubernetes' `Quantity.Value()`; KubeRay uses it for `--num-cpus`).
    pub fn ceil_units(self) -> i128 {
        self.0.div_euclid(1000) + i128::from(self.0.rem_euclid(1000) != 0)
    }

    /// Whole units, rounded down.
    pub fn floor_units(self) -> i128 {
        self.0.div_euclid(1000)
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn saturating_add(self, o: Quantity) -> Quantity {
        Quantity(self.0.saturating_add(o.0))
    }

    pub fn saturating_sub(self, o: Quantity) -> Quantity {
        Quantity(self.0.saturating_sub(o.0))
    }

    /// Parse the Kubernetes quantity grammar: sign, digits with optional fraction, then a
    /// binary suffix (Ki..Ei), a decimal suffix (n, u, m, k, M..E) or an exponent (e3, E-2).
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        match Quantity::parse_plain(s) {
            Some(q) => Ok(q),
            None => Quantity::parse_any(s),
        }
    }

    /// The forms pods and instance types almost always use (`4`, `500m`, `16Gi`): up to
    /// 18 digits and a common suffix, with no sign, fraction or exponent; `None` for
    /// anything else, which [`Quantity::parse_any`] reads. Several are read per admission.
    fn parse_plain(s: &str) -> Option<Quantity> {
        let b = s.as_bytes();
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 18 {
            return None;
        }
        let n = b[..digits]
            .iter()
            .fold(0i128, |n, d| n * 10 + i128::from(d - b'0'));
        let per_unit: i128 = match &b[digits..] {
            b"" => 1000,
            b"m" => 1,
            b"k" => 1000 * 1000,
            b"M" => 1000 * 1_000_000,
            b"G" => 1000 * 1_000_000_000,
            b"Ki" => 1000 << 10,
            b"Mi" => 1000 << 20,
            b"Gi" => 1000 << 30,
            b"Ti" => 1000 << 40,
            _ => return None,
        };
        // At most 10^18 × 1000 × 2^40, far inside an i128.
        let millis = n * per_unit;
        (millis <= MAX_MILLIS).then_some(Quantity(millis))
    }

    fn parse_any(s: &str) -> Result<Quantity, QuantityError> {
        let err = |reason| QuantityError {
            input: s.to_string(),
            reason,
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(err("empty"));
        }
        let (neg, body) = match t.as_bytes()[0] {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let num_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (num, suffix) = body.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err("no number"));
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        // Mantissa as an integer scaled by 10^frac_len; reject absurd lengths before overflow.
        if int_part.len() + frac_part.len() > 30 {
            return Err(err("too many digits"));
        }
        let mut mantissa: i128 = 0;
        for c in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa * 10 + i128::from(c - b'0');
        }
        let frac_len = frac_part.len() as i32;
        // value = mantissa * 10^(-frac_len) * factor; factor as (multiplier, power of ten).
        let (mult, pow10): (i128, i32) = match suffix {
            "" => (1, 0),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            "n" => (1, -9),
            "u" => (1, -6),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..].parse().map_err(|_| err("bad exponent"))?;
                if !(-30..=30).contains(&exp) {
                    return Err(err("exponent out of range"));
                }
                (1, exp)
            }
            _ => return Err(err("unknown suffix")),
        };
        // Milli-units: multiply by 1000 = 10^3.
        let exp = pow10 + 3 - frac_len;
        let scaled = mantissa.checked_mul(mult).ok_or_else(|| err("too large"))?;
        let millis = if exp >= 0 {
            scaled
                .checked_mul(
                    10i128
                        .checked_pow(exp as u32)
                        .ok_or_else(|| err("too large"))?,
                )
                .ok_or_else(|| err("too large"))?
        } else {
            let d = 10i128
                .checked_pow((-exp) as u32)
                .ok_or_else(|| err("too small"))?;
            // Round up: a fraction of a milli-unit still needs a milli-unit.
            scaled / d + i128::from(scaled % d != 0)
        };
        if millis > MAX_MILLIS {
            return Err(err("too large"));
        }
        Ok(Quantity(if neg { -millis } else { millis }))
    }

    /// Parse a JSON value the way Kubernetes does: strings and plain numbers.
    pub fn from_json(v: &Value) -> Result<Quantity, QuantityError> {
        match v {
            Value::String(s) => Quantity::parse(s),
            Value::Number(n) => Quantity::parse(&n.to_string()),
            other => Err(QuantityError {
                input: other.to_string(),
                reason: "not a string or number",
            }),
        }
    }

    /// Canonical text for a CPU-like quantity: whole units when exact, else milli-units.
    pub fn to_decimal_string(self) -> String {
        if self.0 % 1000 == 0 {
            with_suffix(self.0 / 1000, "")
        } else {
            with_suffix(self.0, "m")
        }
    }

    /// Canonical text for a byte quantity: the largest binary suffix that divides it exactly.
    pub fn to_binary_string(self) -> String {
        if self.0 % 1000 != 0 {
            return self.to_decimal_string();
        }
        let units = self.0 / 1000;
        if units == 0 {
            return "0".into();
        }
        // 2^shift divides `units` exactly when its low `shift` bits are zero (in two's
        // complement too), so the suffix follows from the trailing zeros.
        let shift = (units.trailing_zeros() / 10 * 10).min(60);
        let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][(shift / 10) as usize];
        with_suffix(units >> shift, suffix)
    }

    /// The text for a resource of the given name: binary suffixes for byte-sized resources.
    pub fn format_for(self, resource: &str) -> String {
        if is_byte_resource(resource) {
            self.to_binary_string()
        } else {
            self.to_decimal_string()
        }
    }
}

/// `n` in decimal, then `suffix`, without the formatting machinery for the common sizes.
fn with_suffix(n: i128, suffix: &str) -> String {
    // i64's printing is much cheaper than i128's, and quantities almost always fit.
    let mut out = i64::try_from(n).map_or_else(|_| n.to_string(), |n| n.to_string());
    out.push_str(suffix);
    out
}

/// Resources measured in bytes, printed with binary suffixes.
pub fn is_byte_resource(name: &str) -> bool {
    matches!(name, "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> i128 {
        Quantity::parse(s).unwrap().millis()
    }

    proptest::proptest! {
        /// The common forms read without the general grammar mean what it reads.
        #[test]
        fn plain_forms_read_as_the_general_grammar_does(
            digits in "[0-9]{1,20}",
            suffix in proptest::sample::select(&["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "Ti", "Pi", "n", "e3", ".5", " "][..]),
        ) {
            let s = format!("{digits}{suffix}");
            if let Some(fast) = Quantity::parse_plain(&s) {
                proptest::prop_assert_eq!(Ok(fast), Quantity::parse_any(&s), "{}", s);
            }
            proptest::prop_assert_eq!(Quantity::parse(&s), Quantity::parse_any(&s), "{}", s);
        }

        /// Printed as the divide-by-each-suffix loop it replaced prints, and read back.
        #[test]
        fn prints_as_the_suffix_loop_did(
            units in proptest::num::i64::ANY,
            shift in 0u32..64,
            milli in 0i128..3,
        ) {
            let millis = (i128::from(units) << shift.min(62)).clamp(-MAX_MILLIS, MAX_MILLIS) / 1000 * 1000 + milli;
            let q = Quantity(millis);
            let old = if millis % 1000 != 0 {
                format!("{millis}m")
            } else {
                let units = millis / 1000;
                [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)]
                    .iter()
                    .find(|(_, s)| units != 0 && units % (1i128 << s) == 0)
                    .map_or(units.to_string(), |(x, s)| format!("{}{x}", units / (1i128 << s)))
            };
            proptest::prop_assert_eq!(q.to_binary_string(), old.clone());
            if (0..=MAX_MILLIS).contains(&millis) {
                proptest::prop_assert_eq!(Quantity::parse(&old), Ok(q), "{}", old);
            }
        }
    }

    #[test]
    fn parses_kubernetes_forms() {
        assert_eq!(q("2"), 2000);
        assert_eq!(q("1500m"), 1500);
        assert_eq!(q("0.5"), 500);
        assert_eq!(q("8Gi"), 8 * (1i128 << 30) * 1000);
        assert_eq!(q("8G"), 8_000_000_000_000);
        assert_eq!(q("1e3"), 1_000_000);
        assert_eq!(q("1E-3"), 1);
        assert_eq!(q("100n"), 1, "sub-milli rounds up");
        assert_eq!(q("1.5Gi"), 1536 * (1i128 << 20) * 1000);
        assert_eq!(q("+3k"), 3_000_000);
        assert_eq!(q("-1"), -1000);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "Gi",
            "1.2.3",
            "1Q",
            "1e",
            "1ee3",
            "abc",
            ".",
            "1e99",
            "99999999999999999999999999999999",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should not parse");
        }
        let msg = Quantity::parse("8GB").unwrap_err().to_string();
        assert!(msg.contains("8GB") && msg.contains("8Gi"), "{msg}");
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(
            Quantity::parse("1900m").unwrap().to_decimal_string(),
            "1900m"
        );
        assert_eq!(Quantity::parse("2000m").unwrap().to_decimal_string(), "2");
        assert_eq!(
            Quantity::parse("8128Mi").unwrap().to_binary_string(),
            "8128Mi"
        );
        assert_eq!(Quantity::parse("8192Mi").unwrap().to_binary_string(), "8Gi");
        assert_eq!(Quantity::parse("1000").unwrap().to_binary_string(), "1000");
        assert_eq!(Quantity::parse("1024").unwrap().to_binary_string(), "1Ki");
    }

    #[test]
    fn rounding() {
        assert_eq!(Quantity::parse("1900m").unwrap().ceil_units(), 2);
        assert_eq!(Quantity::parse("1900m").unwrap().floor_units(), 1);
        assert_eq!(Quantity::parse("2").unwrap().ceil_units(), 2);
    }
}

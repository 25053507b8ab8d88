//! Key protector IDs, recovery passwords and GUIDs: parsing, validation and display.
//!
//! A key ID is kept as a `u128` whose big-endian bytes are the GUID in *display order*, so the
//! first 8 hex digits a user types are exactly the top 32 bits (the prefix-index key).

use thiserror::Error;

/// What a user typed in a key-ID field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyIdInput {
    /// The first 8 hex digits.
    Prefix(u32),
    /// All 32 hex digits.
    Full(u128),
}

impl KeyIdInput {
    /// How the typed ID is written in audit rows: a braced GUID, or the 8 digits.
    pub fn display(&self) -> String {
        match self {
            KeyIdInput::Prefix(p) => format!("{p:08X}"),
            KeyIdInput::Full(k) => format_guid(*k),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyIdError {
    #[error("is empty")]
    Empty,
    #[error("must be 8 or 32 hexadecimal digits (got {0})")]
    Length(usize),
    #[error("must be exactly 32 hexadecimal digits (got {0})")]
    FullLength(usize),
    #[error("may contain only hexadecimal digits, braces and hyphens")]
    NotHex,
    #[error("is too long")]
    TooLong,
    #[error("must be 8 groups of 6 digits separated by hyphens")]
    PasswordShape,
    #[error("group {0} is not a valid recovery-password block (divisible by 11, below 720896)")]
    PasswordBlock(usize),
}

/// Strips braces and hyphens and checks the rest is hex; returns the digits.
fn hex_digits(s: &str) -> Result<String, KeyIdError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(KeyIdError::Empty);
    }
    if s.len() > 64 {
        return Err(KeyIdError::TooLong);
    }
    let mut out = String::with_capacity(32);
    for c in s.chars() {
        match c {
            '{' | '}' | '-' => {}
            c if c.is_ascii_hexdigit() => out.push(c.to_ascii_uppercase()),
            _ => return Err(KeyIdError::NotHex),
        }
    }
    Ok(out)
}

/// Parses key-ID input: 8 or 32 hex digits, with or without braces/hyphens, any case.
pub fn parse_key_id_input(s: &str) -> Result<KeyIdInput, KeyIdError> {
    let digits = hex_digits(s)?;
    match digits.len() {
        8 => u32::from_str_radix(&digits, 16)
            .map(KeyIdInput::Prefix)
            .map_err(|_| KeyIdError::NotHex),
        32 => u128::from_str_radix(&digits, 16)
            .map(KeyIdInput::Full)
            .map_err(|_| KeyIdError::NotHex),
        0 => Err(KeyIdError::Empty),
        n => Err(KeyIdError::Length(n)),
    }
}

/// Parses a full GUID (key protector ID or volume ID).
pub fn parse_guid(s: &str) -> Result<u128, KeyIdError> {
    // The same rules as `hex_digits`, without its `String`: the import parses two GUIDs a key.
    let s = s.trim();
    if s.is_empty() {
        return Err(KeyIdError::Empty);
    }
    if s.len() > 64 {
        return Err(KeyIdError::TooLong);
    }
    let mut value: u128 = 0;
    let mut digits = 0usize;
    for c in s.chars() {
        match c {
            '{' | '}' | '-' => {}
            c => {
                let d = c.to_digit(16).ok_or(KeyIdError::NotHex)?;
                if digits < 32 {
                    value = value << 4 | u128::from(d);
                }
                digits += 1;
            }
        }
    }
    if digits != 32 {
        return Err(KeyIdError::FullLength(digits));
    }
    Ok(value)
}

/// `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}`, upper case.
pub fn format_guid(k: u128) -> String {
    let h = format!("{k:032X}");
    format!(
        "{{{}-{}-{}-{}-{}}}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The first 8 display digits of a key ID.
pub fn prefix_of(k: u128) -> u32 {
    (k >> 96) as u32
}

/// Validates a 48-digit recovery password (8 blocks of 6 digits, each divisible by 11 and
/// below 720896, as BitLocker requires) and returns it in canonical form.
pub fn validate_recovery_password(s: &str) -> Result<String, KeyIdError> {
    check_recovery_password(s).map(str::to_string)
}

/// `validate_recovery_password` without the copy: the canonical form borrowed from `s`.
pub fn check_recovery_password(s: &str) -> Result<&str, KeyIdError> {
    let s = s.trim();
    if s.len() > 64 {
        return Err(KeyIdError::TooLong);
    }
    if s.split('-').count() != 8 {
        return Err(KeyIdError::PasswordShape);
    }
    for (i, g) in s.split('-').enumerate() {
        if g.len() != 6 || !g.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyIdError::PasswordShape);
        }
        let v: u32 = g.parse().map_err(|_| KeyIdError::PasswordShape)?;
        if v % 11 != 0 || v >= 720_896 {
            return Err(KeyIdError::PasswordBlock(i + 1));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn accepts_8_and_32_digits_in_any_dress() {
        assert_eq!(
            parse_key_id_input("0a1b2c3d").unwrap(),
            KeyIdInput::Prefix(0x0A1B2C3D)
        );
        let full = "{0A1B2C3D-0000-1111-2222-333344445555}";
        let k = parse_key_id_input(full).unwrap();
        assert_eq!(k, KeyIdInput::Full(0x0A1B2C3D_0000_1111_2222_333344445555));
        assert_eq!(
            parse_key_id_input("0a1b2c3d000011112222333344445555").unwrap(),
            k
        );
        assert_eq!(format_guid(0x0A1B2C3D_0000_1111_2222_333344445555), full);
        assert_eq!(
            prefix_of(0x0A1B2C3D_0000_1111_2222_333344445555),
            0x0A1B2C3D
        );
    }

    #[test]
    fn rejects_bad_key_ids() {
        assert_eq!(parse_key_id_input(""), Err(KeyIdError::Empty));
        assert_eq!(parse_key_id_input("0a1b2c"), Err(KeyIdError::Length(6)));
        assert_eq!(parse_key_id_input("0a1b2c3g"), Err(KeyIdError::NotHex));
        assert_eq!(
            parse_key_id_input("'; DROP TABLE keys; --"),
            Err(KeyIdError::NotHex)
        );
        assert_eq!(
            parse_key_id_input(&"a".repeat(100)),
            Err(KeyIdError::TooLong)
        );
    }

    #[test]
    fn parse_guid_agrees_with_the_key_id_input_rules() {
        for s in [
            "{0A1B2C3D-0000-1111-2222-333344445555}",
            " 0a1b2c3d000011112222333344445555 ",
            "{0A1B2C3D-0000-1111-2222-33334444555}",
            "{0A1B2C3D-0000-1111-2222-3333444455556}",
            "{0A1B2C3D-0000-1111-2222-33334444555G}",
            "{0A1B2C3D-0000-1111-2222-33334444555\u{e9}}",
            "",
            "  ",
            &"a".repeat(65),
        ] {
            let by_digits = hex_digits(s).and_then(|d| {
                if d.len() == 32 {
                    u128::from_str_radix(&d, 16).map_err(|_| KeyIdError::NotHex)
                } else {
                    Err(KeyIdError::FullLength(d.len()))
                }
            });
            assert_eq!(parse_guid(s), by_digits, "{s:?}");
        }
    }

    #[test]
    fn recovery_password_rule() {
        let ok = "000011-000022-000033-000044-000055-000066-000077-000088";
        assert_eq!(validate_recovery_password(ok).unwrap(), ok);
        assert_eq!(check_recovery_password(&format!(" {ok}\t")), Ok(ok));
        assert_eq!(
            validate_recovery_password("000012-000022-000033-000044-000055-000066-000077-000088"),
            Err(KeyIdError::PasswordBlock(1))
        );
        assert_eq!(
            validate_recovery_password("000011-000022"),
            Err(KeyIdError::PasswordShape)
        );
    }
}

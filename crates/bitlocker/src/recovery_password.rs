//! The 48-digit BitLocker recovery password.
//!
//! Eight blocks of six digits. Every block is `11 * k` with `k` a 16-bit value, so a block
//! is divisible by 11 (its sixth digit is a check digit) and at most `11 * 65535 = 720885`.
//! The 128-bit key behind the password is the eight `k` values as little-endian `u16`,
//! block 1 first (dislocker `intermediate_key`; domain.md).
//!
//! Input may separate blocks with hyphens, spaces (any mix, any run of them) or nothing.
//! Errors name the block (1-8) that is wrong and why, so a recovery screen can point at it
//! while the user types: see [`check_block`].

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Number of blocks in a recovery password.
pub const BLOCKS: usize = 8;
/// Digits per block.
pub const DIGITS_PER_BLOCK: usize = 6;
/// Digits in a whole password.
pub const DIGITS: usize = BLOCKS * DIGITS_PER_BLOCK;
/// The largest valid block value, `11 * 0xFFFF`.
pub const MAX_BLOCK: u32 = 11 * 0xFFFF;

/// A valid recovery password: the eight 16-bit values `block / 11`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecoveryPassword {
    values: [u16; BLOCKS],
}

/// Why one block is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockProblem {
    /// The block does not have exactly six characters.
    WrongLength { len: usize },
    /// A character that is not an ASCII digit, at this 1-based position in the block.
    NonDigit { position: usize, found: char },
    /// The block is not a multiple of 11 (its check digit is wrong).
    NotDivisibleBy11 { value: u32, remainder: u32 },
    /// The block is a multiple of 11 but `block / 11` does not fit in 16 bits.
    TooLarge { value: u32 },
    /// The block number asked of [`check_block`] is not 1-8.
    NoSuchBlock,
}

impl fmt::Display for BlockProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength { len } => write!(f, "has {len} characters, expected 6 digits"),
            Self::NonDigit { position, found } => {
                write!(f, "character {position} is {found:?}, not a digit")
            }
            Self::NotDivisibleBy11 { value, remainder } => write!(
                f,
                "{value:06} is not divisible by 11 (remainder {remainder}): a digit is mistyped"
            ),
            Self::TooLarge { value } => write!(
                f,
                "{value:06} is larger than {MAX_BLOCK} ({value}/11 = {} does not fit in 16 bits)",
                value / 11
            ),
            Self::NoSuchBlock => write!(f, "there are only blocks 1 to 8"),
        }
    }
}

/// One bad block: which block (1-8), what was given, and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block {block} ({given:?}) {problem}")]
pub struct BlockError {
    /// 1-based block number.
    pub block: usize,
    /// The text of the block as given.
    pub given: String,
    /// Why it is wrong.
    pub problem: BlockProblem,
}

/// Why a recovery password does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The input is empty (or only separators).
    #[error("the recovery password is empty: expected 48 digits in 8 blocks of 6")]
    Empty,
    /// Separated input with other than eight blocks.
    #[error("expected 8 blocks of 6 digits, got {count} block(s) in {given:?}")]
    WrongBlockCount { count: usize, given: String },
    /// Unseparated input with other than 48 characters.
    #[error("expected 48 digits, got {count} character(s) in {given:?}")]
    WrongDigitCount { count: usize, given: String },
    /// One block is bad.
    #[error(transparent)]
    Block(#[from] BlockError),
}

/// Checks one block as the user types it: `block` is 1-based (1-8), `text` the six digits.
/// Returns the block's 16-bit value (`block / 11`).
pub fn check_block(block: usize, text: &str) -> Result<u16, BlockError> {
    let err = |problem| BlockError {
        block,
        given: text.to_owned(),
        problem,
    };
    if !(1..=BLOCKS).contains(&block) {
        return Err(err(BlockProblem::NoSuchBlock));
    }
    // Report a letter before a length problem: "12a45" is more helpfully "not a digit".
    if let Some((i, c)) = text.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
        return Err(err(BlockProblem::NonDigit {
            position: i + 1,
            found: c,
        }));
    }
    if text.len() != DIGITS_PER_BLOCK {
        return Err(err(BlockProblem::WrongLength { len: text.len() }));
    }
    let value = text
        .bytes()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    if value % 11 != 0 {
        return Err(err(BlockProblem::NotDivisibleBy11 {
            value,
            remainder: value % 11,
        }));
    }
    u16::try_from(value / 11).map_err(|_| err(BlockProblem::TooLarge { value }))
}

fn is_separator(c: char) -> bool {
    c == '-' || c.is_whitespace()
}

impl RecoveryPassword {
    /// Parses 48 digits separated by hyphens, spaces or nothing.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let trimmed = input.trim_matches(is_separator);
        if trimmed.is_empty() {
            return Err(ParseError::Empty);
        }
        let blocks: Vec<&str> = if trimmed.contains(is_separator) {
            trimmed
                .split(is_separator)
                .filter(|b| !b.is_empty())
                .collect()
        } else {
            let count = trimmed.chars().count();
            if count != DIGITS {
                return Err(ParseError::WrongDigitCount {
                    count,
                    given: input.to_owned(),
                });
            }
            // 48 characters; if any is multi-byte, `check_block` reports it as a non-digit
            // through the block that holds it.
            let mut out = Vec::with_capacity(BLOCKS);
            let mut rest = trimmed;
            for _ in 0..BLOCKS {
                let cut = rest
                    .char_indices()
                    .nth(DIGITS_PER_BLOCK)
                    .map_or(rest.len(), |(i, _)| i);
                let (head, tail) = rest.split_at(cut);
                out.push(head);
                rest = tail;
            }
            out
        };
        if blocks.len() != BLOCKS {
            // Name a bad block if there is one: more useful than the count alone when a
            // block was split by a stray space.
            return Err(ParseError::WrongBlockCount {
                count: blocks.len(),
                given: input.to_owned(),
            });
        }
        let mut values = [0u16; BLOCKS];
        for (i, text) in blocks.iter().enumerate() {
            values[i] = check_block(i + 1, text)?;
        }
        Ok(Self { values })
    }

    /// A random valid password (each block value uniform over 0..=65535).
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut values = [0u16; BLOCKS];
        for v in &mut values {
            *v = rng.random();
        }
        Self { values }
    }

    /// The 128-bit key: the eight block values as little-endian `u16`, block 1 first.
    pub fn key16(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (chunk, v) in out.chunks_exact_mut(2).zip(self.values) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The password whose key is `key` (every 128-bit key has exactly one password).
    pub fn from_key16(key: &[u8; 16]) -> Self {
        let mut values = [0u16; BLOCKS];
        for (v, chunk) in values.iter_mut().zip(key.chunks_exact(2)) {
            *v = u16::from_le_bytes([chunk[0], chunk[1]]);
        }
        Self { values }
    }

    /// The eight blocks as numbers (`11 * value`), block 1 first.
    pub fn blocks(&self) -> [u32; BLOCKS] {
        self.values.map(|v| 11 * u32::from(v))
    }
}

impl fmt::Display for RecoveryPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.blocks().iter().enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            write!(f, "{b:06}")?;
        }
        Ok(())
    }
}

/// Debug shows the password: this is a test harness, and failing tests need to show it.
impl fmt::Debug for RecoveryPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecoveryPassword({self})")
    }
}

impl FromStr for RecoveryPassword {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for RecoveryPassword {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RecoveryPassword> for String {
    fn from(p: RecoveryPassword) -> Self {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    const PW: &str = "042647-302313-590458-071500-554323-116567-412181-516978";

    #[test]
    fn separators_are_interchangeable() {
        let a = RecoveryPassword::parse(PW).unwrap();
        let spaced = PW.replace('-', " ");
        let bare = PW.replace('-', "");
        assert_eq!(RecoveryPassword::parse(&spaced).unwrap(), a);
        assert_eq!(RecoveryPassword::parse(&bare).unwrap(), a);
        assert_eq!(
            RecoveryPassword::parse(&format!("  {spaced}\n")).unwrap(),
            a
        );
        assert_eq!(a.to_string(), PW);
    }

    #[test]
    fn errors_name_the_block_and_reason() {
        let bad = PW.replacen("590458", "590459", 1);
        match RecoveryPassword::parse(&bad).unwrap_err() {
            ParseError::Block(BlockError { block, problem, .. }) => {
                assert_eq!(block, 3);
                assert_eq!(
                    problem,
                    BlockProblem::NotDivisibleBy11 {
                        value: 590459,
                        remainder: 1
                    }
                );
            }
            e => panic!("unexpected {e:?}"),
        }
        let msg = RecoveryPassword::parse(&bad).unwrap_err().to_string();
        assert!(msg.contains("block 3"), "{msg}");
        assert_eq!(RecoveryPassword::parse("").unwrap_err(), ParseError::Empty);
        assert!(matches!(
            RecoveryPassword::parse(&PW.replace('-', "")[..47]).unwrap_err(),
            ParseError::WrongDigitCount { count: 47, .. }
        ));
    }

    #[test]
    fn check_block_limits() {
        assert_eq!(check_block(1, "720885").unwrap(), 0xFFFF);
        assert_eq!(check_block(8, "000000").unwrap(), 0);
        assert_eq!(
            check_block(2, "720896").unwrap_err().problem,
            BlockProblem::TooLarge { value: 720896 }
        );
        assert_eq!(
            check_block(9, "000000").unwrap_err().problem,
            BlockProblem::NoSuchBlock
        );
        assert_eq!(
            check_block(4, "1234").unwrap_err().problem,
            BlockProblem::WrongLength { len: 4 }
        );
        assert_eq!(
            check_block(4, "12é456").unwrap_err().problem,
            BlockProblem::NonDigit {
                position: 3,
                found: 'é'
            }
        );
    }

    #[test]
    fn key16_round_trip_and_layout() {
        let pw = RecoveryPassword::parse(PW).unwrap();
        // 042647 / 11 = 3877 = 0x0F25, stored little-endian first.
        assert_eq!(&pw.key16()[..2], &[0x25, 0x0f]);
        assert_eq!(RecoveryPassword::from_key16(&pw.key16()), pw);
    }

    fn block_value(s: &str) -> u32 {
        s.parse().unwrap()
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(key in any::<[u8; 16]>()) {
            let pw = RecoveryPassword::from_key16(&key);
            let text = pw.to_string();
            prop_assert_eq!(text.len(), 55);
            prop_assert_eq!(RecoveryPassword::parse(&text).unwrap(), pw);
            prop_assert_eq!(RecoveryPassword::parse(&text.replace('-', "")).unwrap(), pw);
            prop_assert_eq!(pw.key16(), key);
        }

        #[test]
        fn generated_passwords_validate(seed in any::<u64>()) {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let pw = RecoveryPassword::generate(&mut rng);
            let text = pw.to_string();
            for (i, block) in text.split('-').enumerate() {
                prop_assert!(check_block(i + 1, block).is_ok());
            }
            prop_assert_eq!(RecoveryPassword::parse(&text).unwrap(), pw);
        }

        /// One changed digit is always caught by its own block's check: 10^k is +-1 mod 11,
        /// so changing one digit by d (1..=9) changes the block by +-d mod 11, never 0.
        /// A changed digit can therefore never keep divisibility; the test asserts that,
        /// and that the error names exactly that block and its remainder.
        #[test]
        fn single_digit_change(key in any::<[u8; 16]>(), pos in 0usize..48, new_digit in 0u8..10) {
            let pw = RecoveryPassword::from_key16(&key);
            let mut digits: Vec<u8> = pw.to_string().replace('-', "").into_bytes();
            prop_assume!(digits[pos] != b'0' + new_digit);
            digits[pos] = b'0' + new_digit;
            let text = String::from_utf8(digits).unwrap();
            let block = pos / 6 + 1;
            let block_text = &text[(block - 1) * 6..block * 6];
            let value = block_value(block_text);
            prop_assert_ne!(value % 11, 0);
            prop_assert_eq!(RecoveryPassword::parse(&text).unwrap_err(), ParseError::Block(BlockError {
                block,
                given: block_text.to_owned(),
                problem: BlockProblem::NotDivisibleBy11 { value, remainder: value % 11 },
            }));
        }
    }
}

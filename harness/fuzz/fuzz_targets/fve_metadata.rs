//! Fuzzes the BitLocker metadata parser: the input is laid over a valid 2 MiB image from
//! offset 0 (volume header) or over its first metadata block, so mutations reach the FVE
//! entries, the CRC and the validation. Parsing, listing protectors and unlocking with a
//! wrong VMK must return errors, never panic.
#![no_main]

use bitlocker::fve::{entry, Image, Secret};
use bitlocker::Vmk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw: the input alone as an image.
    if let Ok(img) = Image::open(data) {
        let _ = img.protectors();
        let _ = img.unlock(Secret::Vmk(&Vmk::from_bytes([0; 32])));
    }
    // Entries alone.
    let _ = entry::parse_entries(data, 0, 0);
    let _ = bitlocker::fve::BekFile::parse(data);
});

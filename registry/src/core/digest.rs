//! SHA-256 digests and other 32-byte values, and their hex form: keys,
//! pairing codes and device tokens are held only as digests, and the state
//! directory stores digests and the signing secret as 64 hex digits.

use ct_codecs::Decoder as _;
use std::fmt::Write as _;

pub fn sha256(data: &[u8]) -> [u8; 32] {
    hmac_sha256::Hash::hash(data)
}

/// Lower-case hex, two digits a byte.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Exactly 64 hex digits, in either case; anything else is `None`.
pub fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let bytes = ct_codecs::Hex::decode(&mut out, hex, None).ok()?;
    (bytes.len() == 32).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_only_64_digits_parse() {
        let digest = sha256(b"abc");
        let hex = to_hex(&digest);
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(from_hex(&hex), Some(digest));
        assert_eq!(from_hex(&hex.to_uppercase()), Some(digest));
        for bad in ["", "abc", &hex[..62], &format!("{hex}00"), &format!("{}zz", &hex[..62])] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(to_hex(&[0, 1, 0xab]), "0001ab");
    }
}

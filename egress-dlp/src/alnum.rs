//! The letters-and-digits projection of a text: its ASCII letters and digits, in order,
//! everything else dropped. A known secret spelled with separators between its
//! characters (`g-h-p-_-...`) is whole again in it. It is computed over every byte of
//! every request body, so it has a fast path: eight bytes at a time, classified with
//! word arithmetic and packed with one BMI2 `pext` (x86-64 CPUs since 2013).

/// Appends the projection of `src` to `dst`.
pub fn project_into(src: &[u8], dst: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("bmi2") {
        // SAFETY: the CPU has BMI2, checked just above.
        unsafe { project_bmi2(src, dst) };
        return;
    }
    project_scalar(src, dst);
}

/// One byte at a time, without a branch per byte.
fn project_scalar(src: &[u8], dst: &mut Vec<u8>) {
    let start = dst.len();
    dst.resize(start + src.len() + 1, 0);
    let mut n = start;
    for &b in src {
        dst[n] = b;
        n += usize::from(b.is_ascii_alphanumeric());
    }
    dst.truncate(n);
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` set when that byte is an ASCII letter or digit.
fn alnum_high_bits(word: u64) -> u64 {
    // With each byte's high bit forced on, subtracting a constant below 0x80 never
    // borrows from the next byte; the high bit then says "at least the constant".
    let at_least = |w: u64, c: u8| (w | HIGH).wrapping_sub(ONES * u64::from(c)) & HIGH;
    let in_range = |w: u64, lo: u8, hi: u8| at_least(w, lo) & !at_least(w, hi + 1);
    let digits = in_range(word, b'0', b'9');
    // `| 0x20` folds upper case onto lower case and nothing else onto a-z.
    let letters = in_range(word | (ONES * 0x20), b'a', b'z');
    (digits | letters) & !word // a byte with its own high bit set is not ASCII
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn project_bmi2(src: &[u8], dst: &mut Vec<u8>) {
    use std::arch::x86_64::_pext_u64;
    let start = dst.len();
    // Each step stores eight bytes and keeps as many as were letters or digits.
    dst.resize(start + src.len() + 8, 0);
    let mut n = start;
    let mut words = src.chunks_exact(8);
    for chunk in &mut words {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        let keep = alnum_high_bits(word);
        // 0x80 in a byte -> 0xff in that byte.
        let byte_mask = (keep >> 7) * 0xff;
        let packed = _pext_u64(word, byte_mask);
        dst[n..n + 8].copy_from_slice(&packed.to_le_bytes());
        n += (keep.count_ones()) as usize;
    }
    for &b in words.remainder() {
        dst[n] = b;
        n += usize::from(b.is_ascii_alphanumeric());
    }
    dst.truncate(n);
}

/// Byte span in `text` of the `start..end` range of its projection.
pub fn original_span(text: &str, start: usize, end: usize) -> (usize, usize) {
    let mut n = 0;
    let (mut first, mut last) = (0, text.len());
    for (i, c) in text.char_indices() {
        if c.is_ascii_alphanumeric() {
            if n == start {
                first = i;
            }
            if n == end - 1 {
                last = i + 1;
                break;
            }
            n += 1;
        }
    }
    (first, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_classifier_agrees_with_the_standard_library_on_every_byte() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let word = (u64::from(b) << (8 * pos)) | (0x2020_2020_2020_2020 & !(0xff << (8 * pos)));
                let bits = alnum_high_bits(word);
                assert_eq!(bits >> (8 * pos + 7) & 1 == 1, b.is_ascii_alphanumeric(), "byte {b:#04x} at {pos}");
                assert_eq!(bits & !(0x80 << (8 * pos)), 0, "neighbours of {b:#04x} stay spaces");
            }
        }
    }

    #[test]
    fn fast_and_scalar_projections_agree() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in (0..200).chain([1000, 4097]) {
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let (mut fast, mut slow) = (b"prefix".to_vec(), b"prefix".to_vec());
            project_into(&text, &mut fast);
            project_scalar(&text, &mut slow);
            let expected: Vec<u8> = b"prefix".iter().chain(&text).copied().filter(u8::is_ascii_alphanumeric).collect();
            assert_eq!(slow, expected, "scalar, length {len}");
            assert_eq!(fast, expected, "fast, length {len}");
        }
    }

    #[test]
    fn spans_map_back_to_the_text() {
        let text = "a-b-c dé f";
        let mut p = Vec::new();
        project_into(text.as_bytes(), &mut p);
        assert_eq!(p, b"abcdf");
        assert_eq!(original_span(text, 1, 4), (2, 7));
    }
}

//! Text that arrived from the network, made safe to show: in a log line or
//! on a terminal it must not carry escape sequences or run for pages.

/// Longest piece of network-provided text put into one log line.
pub const LOG_TEXT_LIMIT: usize = 160;

/// `s` with every control character replaced by `?`.
pub fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// `s` cut to [`LOG_TEXT_LIMIT`] characters, for a log line. Control
/// characters are escaped by the `{:?}` formatting such text is logged with.
pub fn clip(s: &str) -> &str {
    match s.char_indices().nth(LOG_TEXT_LIMIT) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(printable("plain\x1b[31m text\n"), "plain?[31m text?");
        assert_eq!(printable(""), "");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(LOG_TEXT_LIMIT + 5);
        assert_eq!(clip(&long).chars().count(), LOG_TEXT_LIMIT);
        assert_eq!(clip("short"), "short");
    }
}

//! Colours as clients write them.

/// Parse `#rgb` / `#rrggbb` (the `#` optional) into a normalised `#rrggbb`.
pub fn normalize_color(s: &str) -> Option<String> {
    let h = s.trim().trim_start_matches('#').to_ascii_lowercase();
    if !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match h.len() {
        6 => Some(format!("#{h}")),
        3 => Some(format!(
            "#{}",
            h.chars().flat_map(|c| [c, c]).collect::<String>()
        )),
        _ => None,
    }
}

//! Sizes and durations as people write them in a manifest ("512MiB", "1GiB", "30s",
//! "1m30s"). Owns only the text-to-number step; ranges and messages belong to the caller.

const MIB_PER_GIB: u64 = 1024;

/// Parses a memory size into MiB. `MB` and `GB` are read as `MiB` and `GiB`: nobody means
/// 488.28 MiB when they write "512MB". Returns `None` for text that is not a size; values
/// too large for `u64` saturate so that the caller reports them as out of range.
pub(crate) fn parse_size_mib(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits_end);
    let number = parse_number(number)?;
    let factor = match unit.trim_start().to_ascii_lowercase().as_str() {
        "mib" | "mb" | "m" => 1,
        "gib" | "gb" | "g" => MIB_PER_GIB,
        _ => return None,
    };
    Some(number.saturating_mul(factor))
}

/// Parses a duration into milliseconds: one or more `<integer><unit>` parts with units
/// `ms`, `s`, `m`, `h`, `d` ("500ms", "30s", "1m30s", "4d"). Returns `None` for anything else; values
/// too large for `u64` saturate.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit())?;
        let number = parse_number(&rest[..digits_end])?;
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total = total.saturating_add(number.saturating_mul(factor));
    }
    Some(total)
}

/// Formats milliseconds the way a person would write them back into the manifest.
pub fn format_duration_ms(ms: u64) -> String {
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn parse_number(digits: &str) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("512MiB"), Some(512));
        assert_eq!(parse_size_mib("512MB"), Some(512));
        assert_eq!(parse_size_mib("128 mib"), Some(128));
        assert_eq!(parse_size_mib("1GiB"), Some(1024));
        assert_eq!(parse_size_mib("2GB"), Some(2048));
        assert_eq!(parse_size_mib("99999999999999999999GiB"), Some(u64::MAX));
        for bad in [
            "",
            "lots",
            "512",
            "MiB",
            "1.5GiB",
            "-1MiB",
            "512KiB",
            "512 MiB x",
        ] {
            assert_eq!(parse_size_mib(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms("5m"), Some(300_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms(" 2s "), Some(2_000));
        assert_eq!(parse_duration_ms("4d"), Some(345_600_000));
        for bad in ["", "soon", "30", "s", "1.5s", "-1s", "30 s", "5min", "1w"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations_format_back() {
        assert_eq!(format_duration_ms(900_000), "15m");
        assert_eq!(format_duration_ms(7_200_000), "2h");
        assert_eq!(format_duration_ms(1_500), "1500ms");
        assert_eq!(format_duration_ms(30_000), "30s");
    }
}
